from django.apps import AppConfig


class WavesConfig(AppConfig):
    name = "waves"
    verbose_name = "Task lists"

    def ready(self):
        from config import checks  # noqa: F401  (registers the system checks)
