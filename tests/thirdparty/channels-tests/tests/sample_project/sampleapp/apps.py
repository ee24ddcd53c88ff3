from django.apps import AppConfig


class SampleappConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "tests.sample_project.sampleapp"
