from django.contrib import admin, messages

from .models import ApiKey

# The app list beside every page costs 300 px that the delivery and execution lists need at 1,280 px;
# the home page and breadcrumbs still lead everywhere.
admin.site.enable_nav_sidebar = False


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "last_used_at")
    fields = ("name", "prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def save_model(self, request, obj, form, change) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = ApiKey.create(obj.name)
        obj.pk = key.pk
        obj.__dict__.update(key.__dict__)
        messages.warning(request, f"The new key is {raw} — copy it now; it is stored hashed and not shown again.")

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset) -> None:
        from django.utils import timezone

        n = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {n} key(s).")
