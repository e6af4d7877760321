"""The master: one app's listening socket, connection dispatch, worker lifecycle."""
