#!/usr/bin/env python
"""Django's command-line utility for the pmx example project.

Run it from the repository root so that ``examples.django_app`` is importable:

    python examples/django_app/manage.py migrate
"""

import os
import sys
from pathlib import Path


def main():
    # Make the repository root importable when run as a script.
    repo_root = Path(__file__).resolve().parents[2]
    if str(repo_root) not in sys.path:
        sys.path.insert(0, str(repo_root))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
