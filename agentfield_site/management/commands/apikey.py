"""`manage.py apikey create|list|revoke`: API keys from the command line.

`create` prints the raw key alone on stdout (once; only its hash is stored), so
`KEY=$(python manage.py apikey create --name ci --scope client)` works.
"""

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Q

from agentfield_site.models import ApiKey


class Command(BaseCommand):
    help = "Create, list and revoke API keys (scopes: admin, client, agent)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Make a key and print it once.")
        create.add_argument("--name", required=True)
        create.add_argument("--scope", required=True, choices=[s for s, _ in ApiKey.Scope.choices])
        sub.add_parser("list", help="List keys (never the keys themselves).")
        revoke = sub.add_parser("revoke", help="Revoke a key by id or prefix.")
        revoke.add_argument("key", help="The key's id (from `apikey list`) or its prefix (afk_…).")

    def handle(self, *args, action: str, **options) -> None:
        getattr(self, f"_{action}")(**options)

    def _create(self, name: str, scope: str, **_) -> None:
        if not name.strip() or len(name) > 100:
            raise CommandError("--name must be 1 to 100 characters.")
        key, raw = ApiKey.create(name.strip(), scope)
        self.stderr.write(f"Created {scope} key #{key.pk} {key.name!r}; it is shown once, copy it now:")
        self.stdout.write(raw)

    def _list(self, **_) -> None:
        keys = ApiKey.objects.order_by("id")
        if not keys:
            self.stdout.write("No API keys in the database (API_KEYS from the environment are admin keys).")
            return
        self.stdout.write(f"{'id':>4}  {'scope':<6}  {'prefix':<10}  {'status':<8}  {'last used':<20}  name")
        for key in keys:
            status = "revoked" if key.revoked_at else "active"
            used = key.last_used_at.strftime("%Y-%m-%d %H:%M:%S") if key.last_used_at else "never"
            self.stdout.write(f"{key.pk:>4}  {key.scope:<6}  {key.prefix:<10}  {status:<8}  {used:<20}  {key.name}")

    def _revoke(self, key: str, **_) -> None:
        match = Q(prefix=key) if not key.isdigit() else Q(pk=int(key))
        found = list(ApiKey.objects.filter(match))
        if len(found) != 1:
            raise CommandError(f"{len(found)} keys match {key!r}; give the id from `apikey list`.")
        # Web processes look again within API_KEY_CACHE_SECONDS.
        updated = ApiKey.objects.filter(pk=found[0].pk).revoke()
        self.stdout.write(
            f"Revoked key #{found[0].pk} {found[0].name!r}; its nodes are offline and its subscriptions disabled."
            if updated else "That key was already revoked."
        )
