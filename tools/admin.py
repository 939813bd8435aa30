from django.contrib import admin, messages

from tools.models import Approval, ToolInvocation
from tools.services import ApprovalNotPending, approval_resolve


def _resolve_selected(modeladmin, request, queryset, *, decision: str, always: bool = False) -> None:
    done = skipped = 0
    for approval in queryset.select_related("tenant"):
        try:
            approval_resolve(
                approval_id=approval.pk, tenant=approval.tenant, decision=decision, always=always,
                decided_by=f"admin:{request.user.get_username()}",
            )
            done += 1
        except ApprovalNotPending:
            skipped += 1
    modeladmin.message_user(request, f"{done} approval(s) {'allowed' if decision == 'allow' else 'denied'}.", messages.SUCCESS)
    if skipped:
        modeladmin.message_user(request, f"{skipped} were already decided and left as they were.", messages.WARNING)


@admin.action(description="Allow once")
def allow_once(modeladmin, request, queryset):
    _resolve_selected(modeladmin, request, queryset, decision="allow")


@admin.action(description="Allow always (add to the agent's allowlist)")
def allow_always(modeladmin, request, queryset):
    _resolve_selected(modeladmin, request, queryset, decision="allow", always=True)


@admin.action(description="Deny")
def deny(modeladmin, request, queryset):
    _resolve_selected(modeladmin, request, queryset, decision="deny")


@admin.register(Approval)
class ApprovalAdmin(admin.ModelAdmin):
    list_display = ("tool", "subject_preview", "tenant", "agent", "status", "decided_by", "created_at", "expires_at")
    list_filter = ("status", "tool", "tenant")
    search_fields = ("subject", "tool", "tenant__slug", "agent__slug", "id")
    list_select_related = ("tenant", "agent")
    readonly_fields = [f.name for f in Approval._meta.fields]
    actions = [allow_once, allow_always, deny]
    date_hierarchy = "created_at"

    @admin.display(description="subject")
    def subject_preview(self, obj):
        return obj.subject if len(obj.subject) <= 120 else obj.subject[:120] + "…"

    def has_add_permission(self, request):
        return False  # approvals are requested by tool calls


@admin.register(ToolInvocation)
class ToolInvocationAdmin(admin.ModelAdmin):
    list_display = ("tool", "tenant", "agent", "status", "requested_by", "created_at", "finished_at")
    list_filter = ("status", "tool", "tenant")
    search_fields = ("tool", "tenant__slug", "agent__slug", "id")
    list_select_related = ("tenant", "agent")
    readonly_fields = [f.name for f in ToolInvocation._meta.fields]

    def has_add_permission(self, request):
        return False
