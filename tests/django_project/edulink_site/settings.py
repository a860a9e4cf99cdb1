"""A Django project with apps of three services, configured the way the seed says.

EDULINK_DJANGO_SERVICE picks which service this process is: its 'default'
alias logs in as that service's role (or as the owner, for migrate, with
EDULINK_DB_DJANGO_MIGRATE=1). The application service also reads the user
service's data through a read-only alias.
"""

import os

from microservices.shared.database.django_settings import (
    configure_cross_service_databases,
    configure_service_database,
    get_database_router,
)

SERVICE = os.environ.get("EDULINK_DJANGO_SERVICE", "user")

SECRET_KEY = "edulink-db tests only"
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",  # auth service (topology django_apps)
    "django.contrib.auth",          # auth service
    "profiles",                     # user service
    "applications",                 # application service
    "user_mirror",                  # user service's table, read by other services
]

# EDULINK_DJANGO_POOL=1: Django's own psycopg pool (Django >= 5.1);
# EDULINK_DJANGO_CONN_MAX_AGE: persistent connections (seconds);
# EDULINK_DJANGO_SERVER_BINDING=1: server-side parameter binding.
DATABASES = configure_service_database(SERVICE, pool=os.environ.get("EDULINK_DJANGO_POOL") == "1")
if SERVICE == "application":
    DATABASES.update(configure_cross_service_databases("application", ["user"]))
if os.environ.get("EDULINK_DJANGO_SERVER_BINDING") == "1":  # Django's ServerBindingCursor
    for alias in DATABASES.values():
        alias["OPTIONS"]["server_side_binding"] = True
if os.environ.get("EDULINK_DJANGO_CONN_MAX_AGE"):
    for alias in DATABASES.values():
        alias["CONN_MAX_AGE"] = int(os.environ["EDULINK_DJANGO_CONN_MAX_AGE"])
if os.environ.get("EDULINK_DJANGO_SQLITE_ALIAS") == "1":  # a non-PostgreSQL alias
    DATABASES["local_cache"] = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
DATABASE_ROUTERS = [get_database_router()]
# user_mirror is not in the topology: map it here (the override setting).
EDULINK_DB_APP_SERVICES = {"user_mirror": "user"}
TEST_RUNNER = "microservices.shared.database.django_test_runner.EdulinkTestRunner"

ROOT_URLCONF = "edulink_site.urls"
ALLOWED_HOSTS = ["testserver"]
# Row-level security: the RLS middleware comes after authentication.
# EDULINK_DJANGO_RLS=naive swaps in the session-level SET the issue warns about.
MIDDLEWARE = [
    "edulink_site.auth.HeaderAuthenticationMiddleware",
    "edulink_site.auth.NaiveSessionSetMiddleware"
    if os.environ.get("EDULINK_DJANGO_RLS") == "naive"
    else "microservices.shared.database.django_rls.RLSUserMiddleware",
]
