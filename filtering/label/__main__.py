import sys

from genie_pipeline.filtering.label import main

sys.exit(main())
