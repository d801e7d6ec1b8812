"""An admin base whose pages show stored JSON escaped, never a 500.

The admin prints JSON fields with `ensure_ascii=False`; a lone surrogate stored
before the strict parser (or by another path) then fails the page's UTF-8
encoding, for the object's page and for every list page it appears on.
"""

from django.contrib import admin
from django.db import models

from .lib import strict_json


def escape_json_fields(obj: models.Model) -> None:
    """Replace what cannot be shown in `obj`'s JSON fields, in memory only (see strict_json.sanitized).

    Cheap for the clean values that fill nearly every row of a list page: sanitized
    copies only a value it must change.
    """
    for field in obj._meta.concrete_fields:
        if isinstance(field, models.JSONField) and field.attname in obj.__dict__:
            setattr(obj, field.attname, strict_json.sanitized(getattr(obj, field.attname)))


class EscapedJSONAdmin(admin.ModelAdmin):
    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            escape_json_fields(obj)
        return obj

    def get_changelist_instance(self, request):
        changelist = super().get_changelist_instance(request)
        for obj in changelist.result_list:
            escape_json_fields(obj)
        return changelist
