"""The floors `bench api` measures the project against: bench-only settings and views.

`DJANGO_SETTINGS_MODULE=bench.floor`: Django with no middleware, no apps beyond
what a view needs, and the database DATABASE_URL names (Django's defaults
otherwise). Its two views are the least work Django can do for a request:
an async view that answers at once, and a sync view that runs `SELECT 1`.
`bench.floor_asgi` serves them, and a bare ASGI app (the server's own limit).
"""

import environ
from django.db import connection
from django.http import HttpResponse
from django.urls import path

env = environ.Env()

SECRET_KEY = "bench-floor-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.floor"
USE_TZ = True
DATABASES = {"default": env.db("DATABASE_URL", default="sqlite:///:memory:")}


async def minimal_async(request):
    return HttpResponse(b"ok")


def minimal_sync_select(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return HttpResponse(b"ok")


urlpatterns = [
    path("async", minimal_async),
    path("sync-select", minimal_sync_select),
]
