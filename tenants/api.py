from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from tenants.api_auth import TenantScopedMixin
from tenants.models import Agent, ApiKey
from tenants.serializers import AgentSerializer, ApiKeySerializer, IssuedApiKeySerializer
from tenants.services import api_key_create, api_key_revoke


class AgentViewSet(TenantScopedMixin, viewsets.ModelViewSet):
    """The tenant's agents, addressed by slug. An agent's slug is also its `model` on /v1."""

    queryset = Agent.objects.all()
    serializer_class = AgentSerializer
    lookup_field = "slug"
    lookup_value_regex = "[^/]+"

    def perform_create(self, serializer):
        serializer.save(tenant=self.tenant)

    def perform_update(self, serializer):
        if "slug" in serializer.validated_data and serializer.validated_data["slug"] != serializer.instance.slug:
            raise ValidationError({"slug": "An agent's slug cannot change; create a new agent instead."})
        serializer.save()


class ApiKeyViewSet(TenantScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The tenant's API keys. A new key's secret is returned once, at creation."""

    queryset = ApiKey.objects.all()
    serializer_class = ApiKeySerializer

    @extend_schema(request=ApiKeySerializer, responses={201: IssuedApiKeySerializer})
    def create(self, request):
        serializer = ApiKeySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        with transaction.atomic():
            issued = api_key_create(tenant=self.tenant, name=serializer.validated_data.get("name", ""))
            if serializer.validated_data.get("rate_limit_per_minute") is not None:
                issued.api_key.rate_limit_per_minute = serializer.validated_data["rate_limit_per_minute"]
                issued.api_key.save(update_fields=["rate_limit_per_minute"])
        data = IssuedApiKeySerializer(issued.api_key).data
        data["api_key"] = issued.raw_key
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        return Response(ApiKeySerializer(api_key_revoke(api_key=self.get_object())).data)
