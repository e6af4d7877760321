"""Settings for the pmx Django example project.

Environment variables:

* ``DJANGO_DEBUG``: set to ``1``/``true`` to enable debug mode (off by default).
* ``DJANGO_SECRET_KEY``: secret key; an insecure development key is used otherwise.
* ``DJANGO_DB_PATH``: path of the SQLite database file
  (default: ``examples/django_app/db.sqlite3``).
"""

import os
from pathlib import Path

# examples/django_app/
BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = os.environ.get("DJANGO_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}

SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY",
    "django-insecure-pmx-example-key-do-not-use-in-production",
)

ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "examples.django_app.notes",
]

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "examples.django_app.mysite.urls"

WSGI_APPLICATION = "examples.django_app.mysite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH") or str(BASE_DIR / "db.sqlite3"),
        # Several worker processes share the file: wait for locks instead of
        # failing immediately with "database is locked".
        "OPTIONS": {"timeout": 20},
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
