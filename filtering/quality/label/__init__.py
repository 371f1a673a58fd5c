"""The labelling page (`genie-pipeline label`): people label clips good/bad in a browser.

    server.py       the HTTP server and `serve_labels`; page.html/js/css are its static files
                    (its connections, tokens and bodies: shards/httpgate.py)
    store.py        the label database (SQLite, one transaction per label; counts kept in memory)
    sample.py       which clips to show, in what order
    exchange.py     labels to and from Parquet and Label Studio JSON (`labelstudio.py`)

OUT is an ingest output directory or any folder of mp4 clips; labels go to a SQLite
database (filters.quality.labels_db, default OUT/labels.sqlite).
"""
