from rest_framework import serializers

from agentfield_site.lib import outbound
from agentfield_site.lib.masking import NothingStored, masked_headers, merge_masked
from observability.type_patterns import MAX_PATTERNS, pattern_problem

from .. import subscriptions
from ..models import Delivery, Destination, Subscription


class SubscriptionSerializer(serializers.ModelSerializer):
    """A subscription as the API shows it: never its secret (only create and rotate return one)."""

    url = serializers.CharField(max_length=2048)
    event_types = serializers.ListField(
        child=serializers.CharField(max_length=64, allow_blank=False), allow_empty=False, max_length=MAX_PATTERNS
    )
    headers = serializers.DictField(child=serializers.CharField(allow_blank=True), required=False)

    class Meta:
        model = Subscription
        fields = ["id", "url", "description", "event_types", "headers", "enabled", "disabled_reason", "created_at"]
        read_only_fields = ["id", "disabled_reason", "created_at"]

    def validate_url(self, value: str) -> str:
        try:
            return outbound.clean_url(value)
        except outbound.InvalidTarget as exc:
            raise serializers.ValidationError(str(exc)) from exc

    def validate_event_types(self, value: list[str]) -> list[str]:
        for pattern in value:
            if problem := pattern_problem(pattern):
                raise serializers.ValidationError(problem)
        return list(dict.fromkeys(value))

    def validate_headers(self, value: dict) -> dict:
        """Clean headers; a value sent back masked keeps the stored one (`merge_masked`)."""
        stored = (self.instance.headers or {}) if self.instance is not None else {}
        try:
            return merge_masked(outbound.clean_headers(value), stored)
        except (outbound.InvalidTarget, NothingStored) as exc:
            raise serializers.ValidationError(str(exc)) from exc

    def to_representation(self, instance: Subscription) -> dict:
        data = super().to_representation(instance)
        data["headers"] = masked_headers(instance.headers)
        return data

    def update(self, instance: Subscription, validated_data: dict) -> Subscription:
        if validated_data.get("enabled") and not instance.enabled:
            # Re-enabling starts afresh: no stale reason, no running failure clock.
            validated_data.update(disabled_reason="", failing_since=None)
        moved = "url" in validated_data and validated_data["url"] != instance.url
        instance = super().update(instance, validated_data)
        if moved:
            subscriptions.retarget(instance)
        return instance


class SubscriptionCreatedSerializer(SubscriptionSerializer):
    """A new subscription with its secret (`context["secret"]`), shown this once."""

    secret = serializers.SerializerMethodField(help_text="Shown once: store it to verify signatures.")

    class Meta(SubscriptionSerializer.Meta):
        fields = [*SubscriptionSerializer.Meta.fields, "secret"]

    def get_secret(self, sub: Subscription) -> str:
        return self.context["secret"]


class RotatedSecretSerializer(serializers.Serializer):
    id = serializers.CharField()
    secret = serializers.CharField(help_text="Shown once.")
    previous_secret_valid_for_seconds = serializers.IntegerField()


class TestQueuedSerializer(serializers.Serializer):
    status = serializers.CharField(help_text='Always "queued".')
    delivery_id = serializers.IntegerField()
    webhook_id = serializers.CharField()


class DeadLetterSerializer(serializers.ModelSerializer):
    """The contract's DLQ entry."""

    url = serializers.SerializerMethodField()
    event = serializers.CharField(source="event_type")
    subscription_id = serializers.CharField(allow_null=True)

    class Meta:
        model = Delivery
        fields = [
            "id", "webhook_id", "execution_id", "subscription_id", "url", "event", "attempts",
            "last_status", "last_error", "dead_lettered_at",
        ]

    def get_url(self, row: Delivery) -> str:
        return row.subscription.url if row.subscription_id and row.subscription else row.url


class DeliveryDeadLetterPageSerializer(serializers.Serializer):
    entries = DeadLetterSerializer(many=True)
    total_count = serializers.IntegerField()


class RedriveFilterSerializer(serializers.Serializer):
    execution_id = serializers.CharField(required=False)
    subscription = serializers.CharField(required=False)
    event = serializers.CharField(required=False)


class RedriveSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=2**63 - 1), required=False, max_length=10_000)
    all = serializers.BooleanField(required=False, default=False)
    filter = RedriveFilterSerializer(required=False)

    def validate(self, attrs: dict) -> dict:
        if not attrs.get("ids") and not attrs.get("all") and not attrs.get("filter"):
            raise serializers.ValidationError("Give ids, all: true, or a filter.")
        return attrs


class RedriveResultSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    processed = serializers.IntegerField(help_text="Dead letters asked for.")
    queued = serializers.IntegerField(help_text="Of those, queued again.")


class RetryQueuedSerializer(serializers.Serializer):
    status = serializers.CharField(help_text='Always "queued".')
    execution_id = serializers.CharField()
    webhook_id = serializers.CharField()


class DestinationSerializer(serializers.Serializer):
    """A receiver address with its circuit breaker and queue (`destinations.overview`)."""

    destination = serializers.CharField()
    state = serializers.ChoiceField(choices=Destination.State.choices)
    consecutive_failures = serializers.IntegerField()
    opened_at = serializers.DateTimeField(allow_null=True)
    next_probe_at = serializers.DateTimeField(allow_null=True)
    paused_until = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)
    pending = serializers.IntegerField()
    in_flight = serializers.IntegerField()
    success_rate_1h = serializers.FloatField(allow_null=True)


class DestinationListSerializer(serializers.Serializer):
    results = DestinationSerializer(many=True)
