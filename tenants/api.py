from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from tenants.api_auth import TenantScopedMixin
from tenants.models import Agent, ApiKey
from tenants.serializers import AgentSerializer, ApiKeyCreateSerializer, ApiKeySerializer, IssuedApiKeySerializer
from tenants.services import KeyEscalation, api_key_create, api_key_revoke
from tools.serializers import AgentSkillSerializer
from tools.skills import agent_skills


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

    @extend_schema(responses=AgentSkillSerializer(many=True))
    @action(detail=True, methods=["get"])
    def skills(self, request, slug=None):
        """Every skill the agent could use (its skills_dirs, then the tenant's uploads), each `eligible` or
        with the `reason` it is not."""
        page = self.paginate_queryset(agent_skills(self.get_object()))
        return self.get_paginated_response(AgentSkillSerializer(page, many=True).data)


class ApiKeyViewSet(TenantScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The tenant's API keys. A new key's secret is returned once, at creation."""

    queryset = ApiKey.objects.all()
    serializer_class = ApiKeySerializer

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: IssuedApiKeySerializer})
    def create(self, request):
        """A new key with, at most, the scopes and request rate of the key making the request."""
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            issued = api_key_create(tenant=self.tenant, created_by=request.user.api_key, **serializer.validated_data)
        except KeyEscalation as exc:
            raise ValidationError({exc.field: [exc.message]})
        data = IssuedApiKeySerializer(issued.api_key).data
        data["api_key"] = issued.raw_key
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        return Response(ApiKeySerializer(api_key_revoke(api_key=self.get_object())).data)
