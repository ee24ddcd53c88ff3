"""The Channels tutorial chat, on chanlite: every server process shares the
channel layer through one SQLite file (CHANLITE_DB, default channels.sqlite3)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "demo-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.staticfiles",
    "chanlite.django",  # the chanlite system check and manage.py chanlite
    "chat",
]

MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "mysite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {},
    }
]
ASGI_APPLICATION = "mysite.asgi.application"

# The app's own database (the chat stores nothing in it).
DATABASES = {
    "default": {
        "ENGINE": "chanlite.django.backend",
        "NAME": BASE_DIR / "db.sqlite3",
    }
}

# The channel layer: a SQLite file shared by every server process.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "chanlite.layer.SQLiteChannelLayer",
        "CONFIG": {"path": os.environ.get("CHANLITE_DB", str(BASE_DIR / "channels.sqlite3"))},
    }
}
# On a dqlite cluster instead (examples/cluster/demo.sh): the nodes' addresses,
# comma-separated, this server's own node first (it watches that node's wake hub).
if os.environ.get("CHANLITE_CLUSTER"):
    CHANNEL_LAYERS["default"]["CONFIG"] = {"cluster": os.environ["CHANLITE_CLUSTER"].split(",")}

STATIC_URL = "static/"
USE_TZ = True
