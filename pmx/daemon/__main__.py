"""``python -m pmx.daemon [--resurrect]``: the daemon in the foreground."""

import sys

from pmx.daemon.paths import Home
from pmx.daemon.server import run

run(Home.from_env(), resurrect="--resurrect" in sys.argv[1:])
