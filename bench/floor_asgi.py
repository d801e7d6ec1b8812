"""ASGI apps for the floors of `bench api`: `bare` (no framework) and `application` (bench.floor)."""

import os

from django.core.asgi import get_asgi_application

os.environ["DJANGO_SETTINGS_MODULE"] = "bench.floor"
application = get_asgi_application()


async def bare(scope, receive, send) -> None:
    """The least an HTTP answer can cost under daphne."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
