"""pmx: a process manager for Python web apps.

A master owns the listening socket and hands each accepted connection to one of N
uvicorn-based worker processes; see docs/architecture.md.
"""

__version__ = "0.1.0"
