"""REST API for cron jobs and their run history. Thin: validation in serializers, work in services; their
refusals (CronJobInvalid, CronJobLimitReached, CronJobGone) become responses in beamclaw_project/api_errors.py."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from cron.models import CronJob, CronRun
from cron.selectors import cron_runs_of
from cron.serializers import CronJobInputSerializer, CronJobSerializer, CronRunSerializer
from cron.services import cron_job_create, cron_job_delete, cron_job_run_now, cron_job_update
from tenants.api_auth import TenantScopedMixin

JOB_FILTERS = [
    OpenApiParameter("agent", OpenApiTypes.STR, description="Agent slug"),
    OpenApiParameter("enabled", OpenApiTypes.BOOL),
]


def _bool_param(value: str | None, name: str) -> bool | None:
    if value in (None, ""):
        return None
    if value.lower() not in ("true", "false"):
        raise ValidationError({name: "Must be true or false."})
    return value.lower() == "true"


class CronJobViewSet(
    TenantScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    queryset = CronJob.objects.select_related("agent").order_by("created_at", "id")
    serializer_class = CronJobSerializer

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action != "list":
            return queryset
        params = self.request.query_params
        if params.get("agent"):
            queryset = queryset.filter(agent__slug=params["agent"])
        enabled = _bool_param(params.get("enabled"), "enabled")
        if enabled is not None:
            queryset = queryset.filter(enabled=enabled)
        return queryset

    def _input(self, *, partial: bool) -> dict:
        data = CronJobInputSerializer(data=self.request.data, partial=partial, context={"tenant": self.tenant})
        data.is_valid(raise_exception=True)
        return data.validated_data

    @extend_schema(parameters=JOB_FILTERS)
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=CronJobInputSerializer, responses={201: CronJobSerializer})
    def create(self, request):
        job = cron_job_create(tenant=self.tenant, **self._input(partial=False))
        return Response(CronJobSerializer(job).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=CronJobInputSerializer, responses=CronJobSerializer)
    def update(self, request, pk=None):
        return self._change(partial=False)

    @extend_schema(request=CronJobInputSerializer, responses=CronJobSerializer)
    def partial_update(self, request, pk=None):
        return self._change(partial=True)

    def _change(self, *, partial: bool) -> Response:
        job = self.get_object()
        job = cron_job_update(job=job, changes=self._input(partial=partial))
        return Response(CronJobSerializer(job).data)

    def perform_destroy(self, instance):
        cron_job_delete(job=instance)

    @extend_schema(request=None, responses={202: CronRunSerializer})
    @action(detail=True, methods=["post"])
    def run(self, request, pk=None):
        """Run the job once now (also when it is disabled); its schedule is untouched."""
        cron_run = cron_job_run_now(job=self.get_object())
        return Response(CronRunSerializer(cron_run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        responses=CronRunSerializer(many=True),
        parameters=[OpenApiParameter("status", OpenApiTypes.STR, enum=CronRun.Status.values)],
    )
    @action(detail=True, methods=["get"])
    def runs(self, request, pk=None):
        """The job's runs, newest first."""
        wanted = request.query_params.get("status")
        if wanted and wanted not in CronRun.Status.values:
            raise ValidationError({"status": f"Must be one of {', '.join(CronRun.Status.values)}."})
        page = self.paginate_queryset(cron_runs_of(job=self.get_object(), status=wanted))
        return self.get_paginated_response(CronRunSerializer(page, many=True).data)
