"""The per-user daemon: supervises one master per app and answers the CLI."""
