"""A Content-Security-Policy on the pages people open in a browser: the admin and the dashboard.

Both load only their own scripts and styles (no inline code), and the dashboard
talks only to this server (JSON and SSE), so the policy allows 'self' and nothing
else: an injected script tag or a stored value rendered as HTML cannot run or
send data elsewhere. The JSON API needs none (browsers do not render it), and
the Swagger page at /api/docs/ loads its assets from a CDN.
"""

from django.conf import settings
from django.utils.deprecation import MiddlewareMixin

from .lib.loop_middleware import HooksOnTheLoop


class ContentSecurityPolicyMiddleware(HooksOnTheLoop, MiddlewareMixin):
    def process_response(self, request, response):
        if request.path.startswith(settings.CONTENT_SECURITY_POLICY_PATHS):
            response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response
