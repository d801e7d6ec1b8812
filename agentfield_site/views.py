import logging

from django.db import connection
from django.http import JsonResponse

logger = logging.getLogger(__name__)


def health(request):
    """Liveness plus a database round trip; open without credentials."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # noqa: BLE001 - health must answer, whatever broke
        # The driver's text names hosts, users and paths: the log gets it, not anyone asking.
        logger.exception("health check: database unavailable")
        return JsonResponse({"status": "unhealthy", "database": "unavailable"}, status=503)
    return JsonResponse({"status": "healthy", "database": "ok"})
