import sys

from filtering.label import main

sys.exit(main())
