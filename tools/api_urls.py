from django.urls import path

from tools.api import (
    ApprovalApproveApi,
    ApprovalDenyApi,
    ApprovalDetailApi,
    ApprovalListApi,
    SkillDetailApi,
    SkillListApi,
    ToolInvocationDetailApi,
    ToolInvokeApi,
)

urlpatterns = [
    path("tools/invoke", ToolInvokeApi.as_view(), name="tool-invoke"),
    path("tools/invocations/<uuid:pk>/", ToolInvocationDetailApi.as_view(), name="tool-invocation-detail"),
    path("approvals/", ApprovalListApi.as_view(), name="approval-list"),
    path("approvals/<uuid:pk>/", ApprovalDetailApi.as_view(), name="approval-detail"),
    path("approvals/<uuid:pk>/approve/", ApprovalApproveApi.as_view(), name="approval-approve"),
    path("approvals/<uuid:pk>/deny/", ApprovalDenyApi.as_view(), name="approval-deny"),
    path("skills/", SkillListApi.as_view(), name="skill-list"),
    path("skills/<uuid:pk>/", SkillDetailApi.as_view(), name="skill-detail"),
]
