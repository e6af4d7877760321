"""The worker: a fresh interpreter that imports the app and serves the connections its
master hands it, through uvicorn's protocol classes."""
