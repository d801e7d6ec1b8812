from django.contrib import admin

from .models import PlatformEvent


@admin.register(PlatformEvent)
class PlatformEventAdmin(admin.ModelAdmin):
    list_display = ("id", "type", "source", "timestamp", "execution_id", "agent_node_id", "status")
    list_filter = ("source", "type")
    search_fields = ("=id", "=execution_id", "=workflow_id", "=agent_node_id")
    date_hierarchy = "timestamp"
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
