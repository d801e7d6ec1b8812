from django.db import connection
from django.http import JsonResponse


def health(request):
    """Liveness plus a database round trip; open without credentials."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        db = "ok"
    except Exception as exc:  # noqa: BLE001 - health must answer, whatever broke
        return JsonResponse({"status": "unhealthy", "database": str(exc)}, status=503)
    return JsonResponse({"status": "healthy", "database": db})
