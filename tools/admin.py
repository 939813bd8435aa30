from django.contrib import admin, messages

from tools.models import Approval, Skill, ToolInvocation
from tools.services import ApprovalNotPending, approval_resolve
from tools.skills import skill_files


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


@admin.register(Skill)
class SkillAdmin(admin.ModelAdmin):
    """Uploaded skills, to look at and remove. Tenants upload them (POST /api/skills/), where every file is
    checked; an operator's own skills belong in a folder under BEAMCLAW_SKILLS_ROOTS instead."""

    list_display = ("name", "tenant", "description_preview", "file_count", "size", "updated_at")
    list_filter = ("tenant",)
    search_fields = ("name", "description", "tenant__slug", "id")
    list_select_related = ("tenant",)
    exclude = ("archive",)
    readonly_fields = ("id", "tenant", "name", "description", "digest", "file_count", "size", "files", "skill_md",
                       "created_at", "updated_at")

    @admin.display(description="description")
    def description_preview(self, obj):
        return obj.description if len(obj.description) <= 120 else obj.description[:120] + "…"

    @admin.display(description="files")
    def files(self, obj):
        return "\n".join(f"{item['path']} ({item['size']} bytes)" for item in skill_files(obj))

    def get_queryset(self, request):
        # A page of the list would otherwise load every skill's files; the change page loads its one skill's.
        return super().get_queryset(request).defer("archive", "skill_md")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
