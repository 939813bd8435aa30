"""REST API for channel accounts, their bindings and DM pairings (/api/channels/). Thin: types in
channels_app/serializers.py, every decision in channels_app/accounts.py, whose refusals (ChannelAccountInvalid,
Conflict, PairingNotFound) become responses in beamclaw_project/api_errors.py.

Scopes (tenants/scopes.py, by method): reading is `read`; creating, changing and deleting accounts and
bindings, and approving a pairing, are `admin`: an account holds a platform credential, and approving a
pairing lets a stranger talk to an agent.
"""

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from channels_app.accounts import (
    binding_create,
    binding_delete,
    binding_update,
    channel_account_create,
    channel_account_update,
    pairing_approve,
    pairings_pending,
)
from channels_app.models import Binding, ChannelAccount
from channels_app.serializers import (
    BindingInputSerializer,
    BindingSerializer,
    ChannelAccountInputSerializer,
    PairingApproveSerializer,
    PairingSerializer,
    channel_account_data,
    channel_account_schema,
)
from tenants.api_auth import TenantScopedMixin

ACCOUNT_ID = OpenApiParameter("account_id", OpenApiTypes.INT, OpenApiParameter.PATH, description="Channel account id")


class ChannelAccountViewSet(TenantScopedMixin, viewsets.GenericViewSet):
    """The tenant's channel accounts: Discord bots and webhook endpoints."""

    queryset = ChannelAccount.objects.select_related("agent", "tenant").order_by("name", "id")
    serializer_class = ChannelAccountInputSerializer

    def get_queryset(self):
        queryset = super().get_queryset()
        kind = self.request.query_params.get("kind")
        if self.action == "list" and kind:
            if kind not in ChannelAccount.Kind.values:
                raise ValidationError({"kind": f"Must be one of {', '.join(ChannelAccount.Kind.values)}."})
            queryset = queryset.filter(kind=kind)
        return queryset

    def _input(self, *, partial: bool) -> ChannelAccountInputSerializer:
        data = ChannelAccountInputSerializer(data=self.request.data, partial=partial)
        data.is_valid(raise_exception=True)
        return data

    @extend_schema(
        responses=channel_account_schema(many=True),
        parameters=[OpenApiParameter("kind", OpenApiTypes.STR, enum=ChannelAccount.Kind.values)],
    )
    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response([channel_account_data(account, request=request) for account in page])

    @extend_schema(
        request=ChannelAccountInputSerializer, responses={201: channel_account_schema()},
        description="A webhook account created without a secret gets a generated one, returned once in this answer "
                    "as `secret` and never again.",
    )
    def create(self, request):
        arguments = self._input(partial=False).service_arguments()
        generated = arguments["kind"] == ChannelAccount.Kind.WEBHOOK and not arguments.get("secret")
        account = channel_account_create(tenant=self.tenant, **arguments)
        data = channel_account_data(account, request=request)
        if generated:
            data["secret"] = account.secret
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=channel_account_schema())
    def retrieve(self, request, pk=None):
        return Response(channel_account_data(self.get_object(), request=request))

    @extend_schema(request=ChannelAccountInputSerializer, responses=channel_account_schema())
    def partial_update(self, request, pk=None):
        """Change any of the create fields but `kind`; settings keys merge into the current ones, and `token`
        replaces the secret."""
        account = self.get_object()
        arguments = self._input(partial=True).service_arguments()
        if arguments.pop("kind", account.kind) != account.kind:
            raise ValidationError({"kind": "A channel's kind cannot change; create a new channel instead."})
        account = channel_account_update(account=account, **arguments)
        return Response(channel_account_data(account, request=request))

    def destroy(self, request, pk=None):
        # Its bindings and pairings go with it; a running bot stops at its next reload.
        self.get_object().delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class _AccountChildMixin(TenantScopedMixin):
    """Views under /api/channels/{account_id}/: another tenant's account is a 404, also for a list."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        # Before the body is read: a 400 for another tenant's account would tell that it exists.
        self.account  # noqa: B018 - resolved for its 404

    @property
    def account(self) -> ChannelAccount:
        if not hasattr(self, "_account"):
            self._account = get_object_or_404(
                ChannelAccount.objects.select_related("tenant"), pk=self.kwargs["account_id"], tenant=self.tenant
            )
        return self._account


@extend_schema(parameters=[ACCOUNT_ID])
class BindingViewSet(_AccountChildMixin, viewsets.GenericViewSet):
    """Routes part of an account's conversations (a guild, a channel, a peer) to another agent."""

    queryset = Binding.objects.select_related("agent").order_by("-priority", "id")
    serializer_class = BindingSerializer
    tenant_field = "account__tenant"

    def get_queryset(self):
        return super().get_queryset().filter(account=self.account)

    @extend_schema(responses=BindingSerializer(many=True))
    def list(self, request, account_id=None):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(BindingSerializer(page, many=True).data)

    @extend_schema(request=BindingInputSerializer, responses={201: BindingSerializer})
    def create(self, request, account_id=None):
        data = BindingInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        binding = binding_create(account=self.account, **data.service_arguments())
        return Response(BindingSerializer(binding).data, status=status.HTTP_201_CREATED)

    def retrieve(self, request, account_id=None, pk=None):
        return Response(BindingSerializer(self.get_object()).data)

    @extend_schema(request=BindingInputSerializer, responses=BindingSerializer)
    def partial_update(self, request, account_id=None, pk=None):
        """`match`, when given, replaces the whole match."""
        binding = self.get_object()
        data = BindingInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        return Response(BindingSerializer(binding_update(binding=binding, **data.service_arguments())).data)

    def destroy(self, request, account_id=None, pk=None):
        binding_delete(binding=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(parameters=[ACCOUNT_ID])
class PairingViewSet(_AccountChildMixin, viewsets.GenericViewSet):
    """DM senders waiting for an operator under `dm_policy: pairing`: each was sent a code by the bot."""

    serializer_class = PairingSerializer

    def get_queryset(self):
        return pairings_pending(account=self.account)

    @extend_schema(responses=PairingSerializer(many=True))
    def list(self, request, account_id=None):
        """The pending, unexpired codes, oldest first."""
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(PairingSerializer(page, many=True).data)

    @extend_schema(request=PairingApproveSerializer, responses=PairingSerializer)
    def approve(self, request, account_id=None):
        """The sender of this code may DM the account's agent from now on."""
        data = PairingApproveSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        pairing = pairing_approve(code=data.validated_data["code"], account=self.account)
        return Response(PairingSerializer(pairing).data)
