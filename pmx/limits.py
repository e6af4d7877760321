"""Resource limits a server process sets for itself."""

from __future__ import annotations

import resource


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (what a server
    that holds a descriptor per connection wants; the soft limit is often 1,024).
    Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # RLIM_INFINITY refused (macOS): keep the soft one
            pass
    return soft
