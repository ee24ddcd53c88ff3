"""The ``chanlite.django`` app: add it to INSTALLED_APPS for the chanlite
system checks (tag ``chanlite``) and the ``manage.py chanlite`` command."""

from __future__ import annotations

from django.apps import AppConfig


class ChanliteConfig(AppConfig):
    name = "chanlite.django"
    label = "chanlite"
    verbose_name = "chanlite"

    def ready(self) -> None:
        import chanlite.django.checks  # noqa: F401 (registers the checks)
