"""Tidewatch settings: one module, every knob from the environment (see config/env.py)."""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from config.env import database_from_url, env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("TIDEWATCH_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", default=False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG and env_bool("TIDEWATCH_REQUIRE_SECRET_KEY", default=False):
        raise ImproperlyConfigured("SECRET_KEY must be set when TIDEWATCH_REQUIRE_SECRET_KEY is on")
    # A development key; check --deploy (and our own check) flags it in production.
    SECRET_KEY = "tidewatch-insecure-development-key-change-me-in-production-0123456789"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] + (["*"] if DEBUG else []))
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "chartjs",
    "waves",
    "executions",
    "observability",
    "concurrency",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'tidewatch.sqlite3'}")
# TIDEWATCH_DB_POOL > 0: a pool of up to that many PostgreSQL connections. daphne sets it
# (config/asgi.py): under ASGI every request runs in a new thread, and a new connection cost
# more than most requests' queries. Executors and workers keep one connection each.
DB_POOL = env_int("TIDEWATCH_DB_POOL", 0, minimum=0)
DATABASES = {"default": database_from_url("DATABASE_URL", DATABASE_URL, BASE_DIR, pool=DB_POOL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    # socket_timeout None: redis-py 8 reads with a 5 s timeout by default, and channels-redis
    # waits on a blocking BZPOPMIN for up to 5 s, so every idle consumer died with a
    # TimeoutError after 5 s (channels_redis issue 422).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# The celery backend (config/celery.py): the broker (redis://... or amqp://...) and the queue
# of tasks whose template names none. Workers: `celery -A config worker -Q tidewatch`.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL")
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "tidewatch")
# Redis hands a reserved, unacknowledged message (its worker died before running it) to another
# worker after this many seconds. Shorter is safe: a message delivered twice runs its attempt once.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=1)}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# collectstatic's target; whitenoise serves the finders' files directly, but wants the folder.
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Under daphne there is no runserver static handler: whitenoise serves the finders' files directly.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", default=False)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", default=False)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "config.api.Pagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tidewatch API",
    "DESCRIPTION": "Task lists, runs and everything they record. Session or token authentication "
    "(`Authorization: Token <key>`); you see the task lists of your teams and everything under them.",
    "VERSION": "2",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the installed sidecar package, not a CDN: the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.api.declare_auth_errors",
    ],
}

# --- Tidewatch -------------------------------------------------------------------------
TIDEWATCH = {
    # Where the executor keeps per-attempt files ($TIDEWATCH_OUTPUT, inputs, events).
    "WORK_DIR": VAR_DIR / "work",
    # Seconds between agent heartbeats, and the age after which a running agent is lost.
    "HEARTBEAT_SECONDS": env_int("TIDEWATCH_HEARTBEAT_SECONDS", 2, minimum=1),
    "STALE_AFTER_SECONDS": env_int("TIDEWATCH_STALE_AFTER_SECONDS", 15, minimum=2),
    # Largest transcript entry kept whole; longer lines are cut with a truncation marker.
    "TRANSCRIPT_ENTRY_MAX_BYTES": env_int("TIDEWATCH_TRANSCRIPT_ENTRY_MAX_BYTES", 16384, minimum=64),
    # What one attempt may leave on record: transcript bytes (stdout and stderr together), lines
    # of $TIDEWATCH_EVENTS and the size of one of them, and the size of $TIDEWATCH_OUTPUT. What
    # goes past a cap is counted and dropped, with a truncation marker in the transcript.
    "TRANSCRIPT_MAX_BYTES": env_int("TIDEWATCH_TRANSCRIPT_MAX_BYTES", 8 * 2**20, minimum=1024),
    "EVENTS_MAX_LINES": env_int("TIDEWATCH_EVENTS_MAX_LINES", 10_000, minimum=1),
    "EVENT_LINE_MAX_BYTES": env_int("TIDEWATCH_EVENT_LINE_MAX_BYTES", 65536, minimum=256),
    "OUTPUT_MAX_BYTES": env_int("TIDEWATCH_OUTPUT_MAX_BYTES", 4 * 2**20, minimum=1024),
    # Variables of the executor's environment that never reach a task's process (names, or
    # fnmatch patterns such as AWS_*), on top of DATABASE_URL, SECRET_KEY, REDIS_URL,
    # CELERY_BROKER_URL, PGPASSWORD and TIDEWATCH_ADMIN_PASSWORD.
    "ENV_DENY": env_list("TIDEWATCH_ENV_DENY", []),
    # Largest workflow file or pipeline table import_tasklist (or the API) reads.
    "IMPORT_MAX_BYTES": env_int("TIDEWATCH_IMPORT_MAX_BYTES", 32 * 2**20, minimum=1024),
    "AUDIT_RETENTION_DAYS": env_int("TIDEWATCH_AUDIT_RETENTION_DAYS", 90, minimum=1),
    "DEFAULT_MAX_PARALLELISM": 4,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "WARNING").upper()},
}
