import json

from django import forms
from django.contrib import admin, messages

from agentfield_site.admin_bases import EscapedJSONAdmin, ReadOnlyAdmin, SafeLookupsAdmin
from agentfield_site.lib.masking import masked_headers

from .forwarder import configuration, dead_letters
from .models import ForwarderConfig, ForwarderDeadLetter, PlatformEvent


@admin.register(PlatformEvent)
class PlatformEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "type", "source", "timestamp", "execution_id", "agent_node_id", "status")
    list_filter = ("source", "type")
    search_fields = ("=id", "=execution_id", "=workflow_id", "=agent_node_id")
    date_hierarchy = "timestamp"
    show_full_result_count = False


class ForwarderConfigForm(forms.ModelForm):
    """The collector configuration, validated by the same rules as the API.

    The secret is write-only: the field starts empty, and empty keeps the stored one.
    So are the header values: they show masked, and a value left masked keeps the stored one.
    """

    secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. Leave empty to keep the current secret.",
    )
    clear_secret = forms.BooleanField(required=False, help_text="Remove the secret: batches go unsigned.")
    event_types = forms.JSONField(
        initial=configuration.ALL_TYPES, help_text='Type patterns, e.g. ["execution.*", "node.online"]; ["*"] = all.'
    )
    headers = forms.JSONField(initial=dict, required=False, help_text='Extra request headers, e.g. {"X-Team": "ops"}.')

    class Meta:
        model = ForwarderConfig
        fields = ["url", "secret", "clear_secret", "headers", "enabled", "event_types"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.initial["headers"] = masked_headers(self.instance.headers)

    def clean(self) -> dict:
        data = super().clean()
        try:
            if "url" in data:
                data["url"] = configuration.validate_url(data["url"])
            data["headers"] = configuration.validate_headers(data.get("headers") or {})
            configuration.check_masked(data["headers"])
            data["event_types"] = configuration.validate_event_types(data.get("event_types"))
            data["secret"] = configuration.validate_secret(data.get("secret") or None)
        except configuration.ConfigError as exc:
            raise forms.ValidationError(str(exc)) from None
        if data.get("clear_secret"):
            data["secret"] = ""
        return data


@admin.register(ForwarderConfig)
class ForwarderConfigAdmin(SafeLookupsAdmin):
    form = ForwarderConfigForm
    list_display = ("url", "enabled", "has_secret", "event_types_list", "updated_at")
    readonly_fields = ("status_summary",)

    @admin.display(boolean=True, description="secret")
    def has_secret(self, obj: ForwarderConfig) -> bool:
        return bool(obj.secret)

    @admin.display(description="event types")
    def event_types_list(self, obj: ForwarderConfig) -> str:
        return ", ".join(obj.event_types)

    @admin.display(description="status")
    def status_summary(self, obj: ForwarderConfig) -> str:
        if obj.pk is None:
            return "-"
        return json.dumps(configuration.status(), indent=2)

    def has_add_permission(self, request) -> bool:
        # One configuration: add only while there is none.
        return not ForwarderConfig.objects.exists()

    def save_model(self, request, obj: ForwarderConfig, form, change: bool) -> None:
        data = form.cleaned_data
        saved = configuration.configure(
            url=data["url"],
            secret=data["secret"],
            headers=data["headers"],
            enabled=data["enabled"],
            event_types=data["event_types"],
        )
        obj.pk, obj.created_at, obj.updated_at = saved.pk, saved.created_at, saved.updated_at

    def delete_model(self, request, obj: ForwarderConfig) -> None:
        configuration.unconfigure()


@admin.register(ForwarderDeadLetter)
class ForwarderDeadLetterAdmin(EscapedJSONAdmin):
    list_display = ("id", "event_id", "event_type", "event_source", "retry_count", "error_message", "created_at")
    list_filter = ("event_source", "event_type")
    search_fields = ("=event_id", "error_message")
    actions = ["redrive_selected"]
    readonly_fields = [f.name for f in ForwarderDeadLetter._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Redrive selected dead letters to the collector")
    def redrive_selected(self, request, queryset) -> None:
        try:
            result = dead_letters.redrive(ids=list(queryset.values_list("id", flat=True)))
        except (dead_letters.NotConfigured, dead_letters.AlreadyRedriving) as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, result["message"], messages.SUCCESS if result["success"] else messages.WARNING)
