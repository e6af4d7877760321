"""A master run by the daemon: ``python -m pmx.master LISTEN_FD CONTROL_FD``.

The daemon created the listening socket and keeps its own copy, so while this master
restarts, new connections wait in the backlog. The first control message is the
hello ``{"config": {...}}``. Exit status: 0 after a stop, 1 if the app could not start
or errored (the reason is sent as a ``failed`` event first).
"""

from __future__ import annotations

import logging
import socket
import sys

from pmx import aio, wire
from pmx.config import AppConfig
from pmx.errors import PmxError
from pmx.master.arbiter import Master
from pmx.master.control import Control


def main() -> None:
    listener = socket.socket(fileno=int(sys.argv[1]))
    control_sock = socket.socket(fileno=int(sys.argv[2]))
    hello = wire.recv_blocking(control_sock)
    config = AppConfig.from_dict(hello["config"])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[master] %(levelname)s: %(message)s"))
    logger = logging.getLogger("pmx")
    logger.handlers[:] = [handler]
    logger.setLevel("DEBUG" if config.log_level == "trace" else config.log_level.upper())
    master = Master(config, listener=listener, log_prefix=True)
    control = Control(control_sock, master)
    master.subscribe(control.emit)

    async def serve() -> None:
        control.start()
        try:
            await master.serve()
        finally:
            control.close()

    try:
        aio.run(serve())
    except PmxError as exc:
        control.fail(exc)  # the loop is closed: sent blocking
        logger.error("%s", wire.error(exc)["message"])
        sys.exit(1)


main()
