"""Imports fine until the file named by $FLAKY_MARKER exists, then fails to import."""

import os

if os.path.exists(os.environ["FLAKY_MARKER"]):
    raise RuntimeError("marker present: refusing to start")

from tests.apps.plain import app  # noqa: E402,F401
