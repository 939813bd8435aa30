"""REST API for sessions, their messages and runs. Thin: validation here, work in services and the engine;
their refusals (domain errors) become responses in beamclaw_project/api_errors.py.

POST /api/sessions/{id}/compact/ answers with the compaction a worker made (the summarizing call runs on
the tenant's queue, like every model call). The view waits for it with its database connection given
back; Django's ASGI handler runs each request's sync view on a thread of its own (a per-request
ThreadSensitiveContext), so the wait holds that one thread, not the server's other requests.
"""


from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connection
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from sessions.content import ContentInvalid
from sessions.idempotency import idempotency_key_from, idempotent_run
from sessions.images import images_fetch
from sessions.models import AgentSession, Compaction, Message, Run
from sessions.runs import (
    compaction_outcome_wait,
    compaction_pending_message,
    compaction_request,
    run_abort,
    run_submit,
)
from sessions.serializers import (
    CompactionSerializer,
    MessageCreateSerializer,
    MessageSerializer,
    RunAcceptedSerializer,
    RunSerializer,
    SessionCreateSerializer,
    SessionResetSerializer,
    SessionSerializer,
)
from sessions.services import session_create, session_delete, session_reset
from tenants.api_auth import TenantScopedMixin
from tenants.selectors import agent_by_slug

SESSION_FILTERS = [
    OpenApiParameter("agent", OpenApiTypes.STR, description="Agent slug"),
    OpenApiParameter("status", OpenApiTypes.STR, enum=[s for s, _ in AgentSession.Status.choices]),
    OpenApiParameter("key", OpenApiTypes.STR, description="Exact session key"),
    OpenApiParameter("ephemeral", OpenApiTypes.BOOL),
]

class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()



class SessionViewSet(
    TenantScopedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    queryset = AgentSession.objects.select_related("agent").order_by("-updated_at")
    serializer_class = SessionSerializer

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action != "list":
            return queryset
        params = self.request.query_params
        if params.get("agent"):
            queryset = queryset.filter(agent__slug=params["agent"])
        if params.get("status"):
            if params["status"] not in AgentSession.Status.values:
                raise ValidationError({"status": f"Must be one of {', '.join(AgentSession.Status.values)}."})
            queryset = queryset.filter(status=params["status"])
        if params.get("key"):
            queryset = queryset.filter(key=params["key"])
        if params.get("ephemeral") in ("true", "false"):
            queryset = queryset.filter(ephemeral=params["ephemeral"] == "true")
        return queryset

    @extend_schema(parameters=SESSION_FILTERS)
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=SessionCreateSerializer, responses={201: SessionSerializer})
    def create(self, request):
        data = SessionCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        agent = agent_by_slug(tenant=self.tenant, slug=data.validated_data["agent"])
        if agent is None:
            raise ValidationError({"agent": f"You have no agent '{data.validated_data['agent']}'."})
        session = session_create(
            tenant=self.tenant, agent=agent,
            key=data.validated_data.get("key"), queue_mode=data.validated_data.get("queue_mode"),
        )
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        session_delete(session=instance)

    @extend_schema(request=None, responses=SessionResetSerializer)
    @action(detail=True, methods=["post"])
    def reset(self, request, pk=None):
        session = self.get_object()
        archive = session_reset(session=session)
        session.refresh_from_db()
        return Response({"session": SessionSerializer(session).data, "archived_session": archive.pk})

    @extend_schema(
        request=None,
        responses={
            200: CompactionSerializer,
            202: OpenApiResponse(ErrorSerializer, description="Still summarizing after the wait; the compaction "
                                 "shows in GET …/compactions/ when done."),
            409: OpenApiResponse(ErrorSerializer, description="A run is active (wait or abort it), another "
                                 "compaction is under way, or there is nothing to compact."),
            429: OpenApiResponse(ErrorSerializer, description="The tenant's daily token budget is used up."),
            502: OpenApiResponse(ErrorSerializer, description="The summarizing call failed; the session is unchanged."),
        },
    )
    @action(detail=True, methods=["post"])
    def compact(self, request, pk=None):
        """Summarize the session's older turns now: the model sees the summary plus the recent turns from
        then on; the transcript keeps every message."""
        session = self.get_object()
        request_id = compaction_request(session=session)
        # The summary takes seconds: give the pooled database connection back while waiting for it.
        connection.close()
        outcome = compaction_outcome_wait(request_id)
        if outcome is None:
            return Response({"detail": compaction_pending_message(session.pk), "code": "compaction_pending"},
                            status=status.HTTP_202_ACCEPTED)
        if outcome["status"] != 200:
            return Response({"detail": outcome["message"], "code": outcome["code"]}, status=outcome["status"])
        return Response(outcome["compaction"])

    @extend_schema(responses=CompactionSerializer(many=True))
    @action(detail=True, methods=["get"])
    def compactions(self, request, pk=None):
        """The session's compactions, latest first."""
        session = self.get_object()
        page = self.paginate_queryset(Compaction.objects.filter(session=session).order_by("-first_kept_seq"))
        return self.get_paginated_response(CompactionSerializer(page, many=True).data)

    @extend_schema(
        methods=["GET"], responses=MessageSerializer(many=True),
        parameters=[OpenApiParameter("after_seq", OpenApiTypes.INT, description="Only messages after this seq")],
    )
    @extend_schema(methods=["POST"], request=MessageCreateSerializer, responses={202: RunAcceptedSerializer})
    @action(detail=True, methods=["get", "post"])
    def messages(self, request, pk=None):
        session = self.get_object()
        if request.method == "POST":
            data = MessageCreateSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            key = idempotency_key_from(request.headers)
            # Images linked by URL are fetched now, outside the transaction below (sessions/images.py).
            try:
                content = images_fetch(data.validated_data["content"])
            except ContentInvalid as exc:
                raise ValidationError({"content": [exc.message]}) from None
            # With an Idempotency-Key, a repeat of the same request gets the first one's run.
            run = idempotent_run(
                tenant_id=session.tenant_id, endpoint="session.messages", key=key,
                request_parts=(str(session.pk), request.data),
                start=lambda: run_submit(
                    session=session, content=content, trigger=Run.Trigger.API, mode=data.validated_data.get("mode"),
                ),
            )
            return Response({"run": RunSerializer(run).data}, status=status.HTTP_202_ACCEPTED)
        messages = Message.objects.filter(session=session).order_by("seq")
        after = request.query_params.get("after_seq")
        if after is not None:
            if not after.isdigit():
                raise ValidationError({"after_seq": "Must be a non-negative integer."})
            messages = messages.filter(seq__gt=int(after))
        page = self.paginate_queryset(messages)
        return self.get_paginated_response(MessageSerializer(page, many=True).data)


RUN_FILTERS = [
    OpenApiParameter("session", OpenApiTypes.UUID),
    OpenApiParameter("status", OpenApiTypes.STR, enum=Run.Status.values),
]


class RunViewSet(TenantScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = Run.objects.order_by("-created_at")
    serializer_class = RunSerializer

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action != "list":
            return queryset
        params = self.request.query_params
        if params.get("session"):
            try:
                queryset = queryset.filter(session_id=AgentSession._meta.pk.to_python(params["session"]))
            except DjangoValidationError:
                raise ValidationError({"session": "Must be a session id (UUID)."})
        if params.get("status"):
            if params["status"] not in Run.Status.values:
                raise ValidationError({"status": f"Must be one of {', '.join(Run.Status.values)}."})
            queryset = queryset.filter(status=params["status"])
        return queryset

    @extend_schema(parameters=RUN_FILTERS)
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=None, responses=RunSerializer)
    @action(detail=True, methods=["post"])
    def abort(self, request, pk=None):
        run = run_abort(run=self.get_object(), reason="aborted through the API")
        return Response(RunSerializer(get_object_or_404(Run, pk=run.pk)).data)
