"""Create the database schema automatically when a worker starts.

pmx starts several worker processes at the same moment, and each one loads
``wsgi.py`` or ``asgi.py``. To keep them from running migrations on top of
each other, migrating happens under an exclusive ``flock`` on a lock file
next to the database: the first worker migrates, the others wait and then
find nothing left to do.
"""

import asyncio
import fcntl
import os
import threading

from django.conf import settings
from django.core.management import call_command
from django.db import connections


def _migrate():
    db_path = str(settings.DATABASES["default"]["NAME"])
    if db_path == ":memory:" or db_path.startswith("file:"):
        # Not a plain file: nothing to share with other processes.
        call_command("migrate", interactive=False, verbosity=0)
        return

    os.makedirs(os.path.dirname(os.path.abspath(db_path)), exist_ok=True)
    with open(db_path + ".migrate.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            call_command("migrate", interactive=False, verbosity=0)
        finally:
            # Don't keep the connection used for migrating: it belongs to
            # this thread and must not be inherited if the process forks.
            connections.close_all()
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def ensure_database():
    """Apply any pending migrations, safely across concurrent processes."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _migrate()
        return

    # An ASGI server may import the application from inside its event loop,
    # where Django refuses to touch the database; migrate in a plain thread.
    errors = []

    def run():
        try:
            _migrate()
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="ensure-database")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
