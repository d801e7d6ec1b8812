"""Admin bases that answer what they are given without a 500.

`SafeLookupsAdmin`: Django's changelist takes any lookup on a model's own fields
from the query string (`?created_at__gte=...`), and some the database cannot run:
a time past the year 9999 once in UTC, `__year=99999`, `contains` on a JSON field
on SQLite, a NUL on PostgreSQL. Those get Django's own "invalid lookup" answer
(a redirect to `?e=1`), as a lookup it refuses itself does; an object id with a
NUL in the path is no such object, and an action on selected ids that cannot
be ids (forged: a NUL, a word for a number) changes nothing. django-q2's task
pages get the same (`agentfield_site/admin.py`).

`ReadOnlyAdmin`: rows the platform writes itself (events, executions, deliveries):
an operator reads them and runs the page's actions, and never adds, edits or
deletes one by hand.

`EscapedJSONAdmin`: the admin prints JSON fields with `ensure_ascii=False`; a lone
surrogate stored before the strict parser (or by another path) then fails the
page's UTF-8 encoding, for the object's page and for every list page it appears on.
"""

import contextlib

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import ValidationError
from django.db import DataError, NotSupportedError, connection, models, transaction

from .lib import strict_json


def escape_json_fields(obj: models.Model) -> None:
    """Replace what cannot be shown in `obj`'s JSON fields, in memory only (see strict_json.sanitized).

    Cheap for the clean values that fill nearly every row of a list page: sanitized
    copies only a value it must change.
    """
    for field in obj._meta.concrete_fields:
        if isinstance(field, models.JSONField) and field.attname in obj.__dict__:
            setattr(obj, field.attname, strict_json.sanitized(getattr(obj, field.attname)))


def key_or_none(model, value: str):
    """`value` as `model`'s primary key, or None when no row could have it.

    What the database cannot compare is refused here, not by a 500: a NUL (PostgreSQL
    refuses it in every statement), "x" for an integer key, an integer past the
    column's range (OverflowError on SQLite, DataError on PostgreSQL).
    """
    pk = model._meta.pk
    if "\x00" in value:
        return None
    try:
        key = pk.to_python(value)
    except ValidationError:
        return None
    if isinstance(key, int):
        low, high = connection.ops.integer_field_range(pk.get_internal_type())
        if (low is not None and key < low) or (high is not None and key > high):
            return None
    return key


def _savepoint():
    """A savepoint inside a transaction (a test's, ATOMIC_REQUESTS), where a refused statement
    would spoil the rest on PostgreSQL; outside one nothing to protect, and no transaction to
    begin (on SQLite it would take the write lock)."""
    return transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()


class SafeLookupsAdmin(admin.ModelAdmin):
    def get_object(self, request, object_id, from_field=None):
        # An id no row could have (a NUL, an integer past the key's range): no such object,
        # as Django answers for any other malformed id, not a 500.
        if "\x00" in str(object_id) or (from_field is None and key_or_none(self.model, str(object_id)) is None):
            return None
        return super().get_object(request, object_id, from_field)

    def response_action(self, request, queryset):
        # The selected ids come from the form as they were posted: one no row could have
        # (`key_or_none`) was a 500.
        if any(key_or_none(self.model, value) is None for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)):
            self.message_user(request, "No such items: no items have been changed.", messages.WARNING)
            return None
        return super().response_action(request, queryset)

    def get_changelist_instance(self, request):
        try:
            with _savepoint():
                return super().get_changelist_instance(request)
        except (OverflowError, ValueError, NotSupportedError, DataError) as exc:
            raise IncorrectLookupParameters(exc) from exc


class EscapedJSONAdmin(SafeLookupsAdmin):
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


class ReadOnlyAdmin(EscapedJSONAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
