"""ASGI entry point for the pmx Django example.

    pmx run examples.django_app.mysite.asgi:application -i 2 --bind 127.0.0.1:8001
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.mysite.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

from examples.django_app.mysite.bootstrap import ensure_database  # noqa: E402

application = get_asgi_application()
ensure_database()
