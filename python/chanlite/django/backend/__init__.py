"""``"ENGINE": "chanlite.django.backend"``: Django's sqlite3 backend with chanlite."""
