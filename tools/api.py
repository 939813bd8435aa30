"""REST API for tools: POST /api/tools/invoke, invocations, approvals, and uploaded skills. Thin: work in
tools.services and tools.skills.

POST /api/tools/invoke answers 200 with the tool's result once a worker ran it. DRF views run on the
ASGI server's single sync thread, so the view must not sit there for seconds: it does the quick part
(auth, policy, validation, approval check, enqueue) synchronously and streams the body from an async
generator that waits for the worker's result in Redis.
"""

import asyncio
import base64
import binascii
import json
import re
import time
import uuid

from django.conf import settings
from django.db import connection
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from beamclaw_project.asyncdb import db_call
from beamclaw_project.infra.redis import async_redis
from beamclaw_project.json_input import JSONParser
from sessions.idempotency import idempotency_key_from
from sessions.selectors import session_of
from tenants.api_auth import TenantScopedMixin
from tenants.selectors import agent_by_slug
from tools.models import Approval, Skill, ToolInvocation
from tools.serializers import (
    ApprovalDecisionSerializer,
    ApprovalDenySerializer,
    ApprovalSerializer,
    SkillDetailSerializer,
    SkillSerializer,
    SkillUploadSerializer,
    ToolInvocationSerializer,
    ToolInvokeInputSerializer,
    ToolResultSerializer,
)
from tools.services import approval_resolve, invocation_response, invocation_result_key, tool_invoke_once
from tools.skills import skill_delete, skill_upload

AGENT_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _caller(request) -> str:
    key = request.user.api_key
    return f"api-key:{key.name or key.prefix}"


class ToolInvokeApi(APIView):
    @extend_schema(
        request=ToolInvokeInputSerializer,
        responses={
            200: ToolResultSerializer,
            202: OpenApiResponse(ApprovalSerializer, description="The call waits for approval; its result will be on the approval."),
            400: OpenApiResponse(description="Bad input; the message names the field."),
            403: OpenApiResponse(description="The agent's tool policy does not allow this tool."),
            404: OpenApiResponse(description="No such agent or session in this tenant."),
        },
    )
    def post(self, request):
        """Run one tool as the agent would, with the same policy, approvals and sandbox."""
        data = ToolInvokeInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        idempotency_key = idempotency_key_from(request.headers)
        tenant = request.user.tenant
        agent = agent_by_slug(tenant=tenant, slug=data.validated_data["agent"])
        if agent is None:
            raise NotFound(f"No agent {data.validated_data['agent']!r} in this tenant.")
        session = None
        if data.validated_data.get("session"):
            session = session_of(tenant=tenant, session_id=data.validated_data["session"])
            if session is None:
                raise NotFound("No such session in this tenant.")
            if session.agent_id != agent.pk:
                raise ValidationError({"session": ["This session belongs to another agent."]})
        # Its refusals (unknown tool, policy, bad input, limits, a reused key) are domain errors, answered by
        # beamclaw_project/api_errors.py.
        outcome = tool_invoke_once(
            idempotency_key=idempotency_key, request_parts=(request.data,),
            tenant=tenant, agent=agent, session=session, tool=data.validated_data["tool"],
            tool_input=data.validated_data["input"], requested_by=_caller(request),
        )
        if outcome.approval is not None:
            return Response(ApprovalSerializer(outcome.approval).data, status=status.HTTP_202_ACCEPTED)
        # The body below waits up to a minute for the worker. Django would keep this request's database
        # connection until the response ends, and a few dozen slow calls would then drain the pool that
        # every tenant's requests share: give it back now.
        connection.close()
        if outcome.replay:
            if outcome.invocation.status in ToolInvocation.SETTLED_STATUSES:
                return Response(invocation_response(outcome.invocation))
            return StreamingHttpResponse(
                _await_replayed_result(outcome.invocation.pk), content_type="application/json", status=status.HTTP_200_OK
            )
        return StreamingHttpResponse(
            _await_result(outcome.invocation), content_type="application/json", status=status.HTTP_200_OK
        )


async def _await_result(invocation: ToolInvocation):
    wait = settings.BEAMCLAW_TOOLS["INVOKE_WAIT_SECONDS"]
    deadline = time.monotonic() + wait
    key = invocation_result_key(invocation.pk)
    while (remaining := deadline - time.monotonic()) > 0:
        # Short blocking reads: the Redis client's socket timeout (5 s by default) would end a long one.
        popped = await async_redis().blpop([key], timeout=min(2.0, max(remaining, 0.1)))
        if popped is not None:
            yield popped[1]
            return
    yield json.dumps({
        **invocation_response(invocation),
        "ok": False,
        "error": f"no result after {wait:g} s; the call is still running. GET /api/tools/invocations/{invocation.pk}/ shows it when done.",
        "output": "",
    })


@db_call
def _settled_invocation(invocation_id) -> ToolInvocation | None:
    invocation = ToolInvocation.objects.filter(pk=invocation_id).first()
    return invocation if invocation is not None and invocation.status in ToolInvocation.SETTLED_STATUSES else None


async def _await_replayed_result(invocation_id):
    """A repeated request for an invocation still running: the first request's waiter takes the result
    from Redis, so this one watches the row instead (replays are rare; a short poll is cheap enough)."""
    deadline = time.monotonic() + settings.BEAMCLAW_TOOLS["INVOKE_WAIT_SECONDS"]
    while time.monotonic() < deadline:
        invocation = await _settled_invocation(invocation_id)
        if invocation is not None:
            yield json.dumps(invocation_response(invocation))
            return
        await asyncio.sleep(0.25)
    yield json.dumps({
        "ok": False, "invocation": str(invocation_id), "output": "",
        "error": f"the call is still running. GET /api/tools/invocations/{invocation_id}/ shows it when done.",
    })


class ToolInvocationDetailApi(TenantScopedMixin, generics.RetrieveAPIView):
    """An API tool invocation and, once it ran, its result."""

    queryset = ToolInvocation.objects.select_related("agent", "approval")
    serializer_class = ToolInvocationSerializer


class ApprovalListApi(TenantScopedMixin, generics.ListAPIView):
    """The tenant's approvals, newest first."""

    queryset = Approval.objects.select_related("agent", "tool_call", "invocation")
    serializer_class = ApprovalSerializer

    @extend_schema(parameters=[
        OpenApiParameter("status", OpenApiTypes.STR, enum=Approval.Status.values),
        OpenApiParameter("agent", OpenApiTypes.STR, description="Agent slug"),
        OpenApiParameter("session", OpenApiTypes.UUID),
    ])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        queryset = super().get_queryset()
        params = self.request.query_params
        if params.get("status"):
            if params["status"] not in Approval.Status.values:
                raise ValidationError({"status": [f"Must be one of {', '.join(Approval.Status.values)}."]})
            queryset = queryset.filter(status=params["status"])
        if params.get("agent"):
            if not AGENT_SLUG.match(params["agent"]):
                raise ValidationError({"agent": ["Must be an agent slug."]})
            queryset = queryset.filter(agent__slug=params["agent"])
        if params.get("session"):
            try:
                session_id = uuid.UUID(params["session"])
            except ValueError:
                raise ValidationError({"session": ["Must be a session id (UUID)."]})
            queryset = queryset.filter(session_id=session_id)
        return queryset


class ApprovalDetailApi(TenantScopedMixin, generics.RetrieveAPIView):
    queryset = Approval.objects.select_related("agent", "tool_call", "invocation")
    serializer_class = ApprovalSerializer


def _resolve(request, pk, *, decision: str, always: bool, reason: str) -> Response:
    tenant = request.user.tenant
    get_object_or_404(Approval, pk=pk, tenant=tenant)
    approval = approval_resolve(
        approval_id=pk, tenant=tenant, decision=decision, always=always, decided_by=_caller(request), reason=reason
    )
    approval = Approval.objects.select_related("agent", "tool_call", "invocation").get(pk=approval.pk)
    return Response(ApprovalSerializer(approval).data)


class ApprovalApproveApi(APIView):
    @extend_schema(request=ApprovalDecisionSerializer, responses={200: ApprovalSerializer, 409: OpenApiResponse(description="Already decided.")})
    def post(self, request, pk):
        """Allow the call once, or always (`{"always": true}` adds it to the agent's allowlist)."""
        data = ApprovalDecisionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _resolve(request, pk, decision="allow", always=data.validated_data["always"], reason=data.validated_data["reason"])


class ApprovalDenyApi(APIView):
    @extend_schema(request=ApprovalDenySerializer, responses={200: ApprovalSerializer, 409: OpenApiResponse(description="Already decided.")})
    def post(self, request, pk):
        """Deny the call: it does not run, and the model is told it was denied."""
        data = ApprovalDenySerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _resolve(request, pk, decision="deny", always=False, reason=data.validated_data["reason"])


class UploadTooLarge(APIException):
    status_code = 413
    default_code = "request_too_large"


_UPLOAD_FIELDS = ("file", "skill_md", "zip_base64")


class SkillListApi(TenantScopedMixin, generics.ListAPIView):
    """The tenant's uploaded skills (GET), and uploading one (POST). An agent's whole set, its server
    folders included, is GET /api/agents/{slug}/skills/."""

    queryset = Skill.objects.defer("archive", "skill_md")
    serializer_class = SkillSerializer
    parser_classes = [JSONParser, MultiPartParser]

    @extend_schema(
        request={"multipart/form-data": SkillUploadSerializer, "application/json": SkillUploadSerializer},
        responses={
            201: SkillDetailSerializer,
            200: OpenApiResponse(SkillDetailSerializer, description="A skill of that name was replaced (same id)."),
            400: OpenApiResponse(description="Bad upload; the message names the field and, for a SKILL.md, the line."),
            409: OpenApiResponse(description="The tenant has as many skills as it may."),
            413: OpenApiResponse(description="The upload is larger than allowed."),
        },
    )
    def post(self, request):
        """Upload a skill: a .zip of its folder or a SKILL.md (multipart `file`), or JSON `skill_md` /
        `zip_base64`. A skill of the same name is replaced."""
        limit = settings.BEAMCLAW_TOOLS["SKILL_UPLOAD_MAX_BYTES"]
        # Refused before the body is parsed: multipart parsing would spool any size to disk first.
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit * 4 // 3 + 64 * 1024:
            raise UploadTooLarge(f"A skill upload may be at most {limit} bytes.")
        data = SkillUploadSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        given = [name for name in _UPLOAD_FIELDS if data.validated_data.get(name) is not None]
        if len(given) != 1:
            raise ValidationError({"file": ["Send exactly one of: file (multipart), skill_md, zip_base64."]})
        field = given[0]
        if field == "file":
            upload = data.validated_data["file"]
            if upload.size > limit:
                raise UploadTooLarge(f"A skill upload may be at most {limit} bytes.")
            content = upload.read(limit + 1)
        elif field == "skill_md":
            content = data.validated_data["skill_md"].encode()
        else:
            try:
                content = base64.b64decode(data.validated_data["zip_base64"], validate=True)
            except (binascii.Error, ValueError):
                raise ValidationError({"zip_base64": ["Must be base64 (the bytes of a .zip)."]}) from None
        skill, created = skill_upload(tenant=request.user.tenant, data=content, field=field)
        return Response(SkillDetailSerializer(skill).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class SkillDetailApi(TenantScopedMixin, generics.RetrieveDestroyAPIView):
    """An uploaded skill with its SKILL.md and its files; DELETE removes it from every agent of the tenant."""

    queryset = Skill.objects.all()
    serializer_class = SkillDetailSerializer

    def perform_destroy(self, instance):
        skill_delete(skill=instance)
