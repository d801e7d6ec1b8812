"""A Content-Security-Policy on the pages people open in a browser: the admin and the dashboard.

Both load only their own scripts and styles (no inline code), and the dashboard
talks only to this server (JSON and SSE), so the policy allows 'self' and nothing
else: an injected script tag or a stored value rendered as HTML cannot run or
send data elsewhere. The JSON API needs none (browsers do not render it), and
the Swagger page at /api/docs/ loads its assets from a CDN.
"""

from django.conf import settings


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.path.startswith(settings.CONTENT_SECURITY_POLICY_PATHS):
            response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response
