from django.contrib import admin, messages

from .admin_bases import SafeLookupsAdmin
from .models import ApiKey

# The app list beside every page costs 300 px that the delivery and execution lists need at 1,280 px;
# the home page and breadcrumbs still lead everywhere.
admin.site.enable_nav_sidebar = False


@admin.register(ApiKey)
class ApiKeyAdmin(SafeLookupsAdmin):
    list_display = ("name", "scope", "prefix", "created_at", "last_used_at", "revoked_at", "demo")
    list_filter = ("scope", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "prefix")
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at", "demo")
    fields = ("name", "scope", "prefix", "created_at", "last_used_at", "revoked_at", "demo")
    actions = ["revoke"]

    def get_fields(self, request, obj=None):
        # Adding: only what one chooses (the rest is made with the key, or later).
        return self.fields if obj is not None else ("name", "scope")

    def get_readonly_fields(self, request, obj=None):
        # A key's scope is fixed once issued: what it created was created under it.
        return (*self.readonly_fields, "scope") if obj is not None else self.readonly_fields

    def save_model(self, request, obj, form, change) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = ApiKey.create(obj.name, obj.scope)
        obj.pk = key.pk
        obj.__dict__.update(key.__dict__)
        messages.warning(request, f"The new key is {raw} — copy it now; it is stored hashed and not shown again.")

    def has_delete_permission(self, request, obj=None) -> bool:
        # Revoke instead: executions, nodes and subscriptions record the key that made them.
        return False

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset) -> None:
        n = queryset.revoke()
        self.message_user(request, f"Revoked {n} key(s); their nodes are offline and their subscriptions disabled.")


def _safe_task_pages() -> None:
    """django-q2's task pages (successful, failed, scheduled, queued), with our lookups' guard mixed in."""
    from django_q import admin as q_admin  # registers them, once
    from django_q.models import Failure, OrmQ, Schedule, Success

    for model, model_admin in ((Success, q_admin.TaskAdmin), (Failure, q_admin.FailAdmin),
                               (Schedule, q_admin.ScheduleAdmin), (OrmQ, q_admin.QueueAdmin)):
        if admin.site.is_registered(model):  # the queue's page only with the database broker
            admin.site.unregister(model)
            admin.site.register(model, type(model_admin.__name__, (SafeLookupsAdmin, model_admin), {}))


_safe_task_pages()
