from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.compatibility, deploy=True)
def channel_layer_check(app_configs, **kwargs):
    """The in-memory channel layer only reaches consumers inside one process."""
    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    if not settings.DEBUG and backend.endswith("InMemoryChannelLayer"):
        return [
            Warning(
                "The in-memory channel layer is in use with DEBUG off.",
                hint="Live updates then reach only clients of this one server process. "
                "Set REDIS_URL to use channels-redis in production.",
                id="tidewatch.W001",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def secret_key_check(app_configs, **kwargs):
    if settings.SECRET_KEY.startswith("tidewatch-insecure-"):
        return [
            Warning("SECRET_KEY is the development default.", hint="Set SECRET_KEY.", id="tidewatch.W002")
        ]
    return []
