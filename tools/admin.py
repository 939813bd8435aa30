"""Approvals, API tool invocations and uploaded skills in the Django admin.

An approval is decided only through `approval_resolve`, the one service the REST API, the WebSocket and
Discord call too, so an admin's decision locks, records and resumes the call exactly as theirs does, with
`decided_by` naming the admin user. Its fields are the record of what was asked and who answered: never
edited here. A pending approval's page carries Allow once / Allow always / Deny; a decided one shows who
decided and when.
"""

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse

from tools.models import Approval, Skill, ToolInvocation
from tools.services import ApprovalNotPending, approval_resolve
from tools.skills import skill_files

# What each button or action asks of approval_resolve: (decision, always, what the operator is told).
DECISIONS = {
    "allow_once": ("allow", False, "allowed once: the call runs now"),
    "allow_always": ("allow", True, "allowed, and added to the agent's allowlist: the call runs now"),
    "deny": ("deny", False, "denied: the call is not run"),
}


def _decide(request, approval: Approval, choice: str) -> bool:
    """Decide through the one approvals service; False when someone (or the timeout) decided first."""
    decision, always, _ = DECISIONS[choice]
    try:
        approval_resolve(
            approval_id=approval.pk, tenant=approval.tenant, decision=decision, always=always,
            decided_by=f"admin:{request.user.get_username()}",
        )
    except ApprovalNotPending:
        return False
    return True


def _resolve_selected(modeladmin, request, queryset, choice: str) -> None:
    approvals = list(queryset.select_related("tenant"))
    done = sum(_decide(request, approval, choice) for approval in approvals)
    modeladmin.message_user(request, f"{done} approval(s) {DECISIONS[choice][2]}.", messages.SUCCESS)
    if done < len(approvals):
        modeladmin.message_user(
            request, f"{len(approvals) - done} were already decided and left as they were.", messages.WARNING
        )


@admin.action(description="Allow once", permissions=["decide"])
def allow_once(modeladmin, request, queryset):
    _resolve_selected(modeladmin, request, queryset, "allow_once")


@admin.action(description="Allow always (add to the agent's allowlist)", permissions=["decide"])
def allow_always(modeladmin, request, queryset):
    _resolve_selected(modeladmin, request, queryset, "allow_always")


@admin.action(description="Deny", permissions=["decide"])
def deny(modeladmin, request, queryset):
    _resolve_selected(modeladmin, request, queryset, "deny")


@admin.register(Approval)
class ApprovalAdmin(admin.ModelAdmin):
    list_display = ("tool", "subject_preview", "tenant", "agent", "status", "decided_by", "created_at", "expires_at")
    list_filter = ("tenant", "status", "tool")
    search_fields = ("subject", "tool", "tenant__slug", "agent__slug", "id")
    list_select_related = ("tenant", "agent")
    fieldsets = (
        ("Decision", {"fields": ("status", "decided_by", "decided_at", "always", "reason", "expires_at")}),
        ("What was asked", {"fields": ("tenant", "agent", "session", "tool", "subject", "input", "tool_call",
                                       "invocation", "created_at", "id")}),
    )
    readonly_fields = [f.name for f in Approval._meta.fields]
    actions = [allow_once, allow_always, deny]
    date_hierarchy = "created_at"

    @admin.display(description="subject")
    def subject_preview(self, obj):
        return obj.subject if len(obj.subject) <= 120 else obj.subject[:120] + "…"

    def has_add_permission(self, request):
        return False  # approvals are requested by tool calls

    def has_change_permission(self, request, obj=None):
        return False  # the record of a decision; deciding is the buttons' and actions' job

    def has_delete_permission(self, request, obj=None):
        # A pending approval holds its call; it goes by a decision (or with its session), not on its own.
        pending = obj is not None and obj.status == Approval.Status.PENDING
        return not pending and super().has_delete_permission(request, obj)

    def has_decide_permission(self, request, obj=None):
        return request.user.has_perm("tools.change_approval")

    def get_urls(self):
        decide = path("<path:object_id>/decide/", self.admin_site.admin_view(self.decide_view), name="tools_approval_decide")
        return [decide, *super().get_urls()]

    def decide_view(self, request, object_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        approval = self.get_object(request, unquote(object_id))
        if approval is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_decide_permission(request, approval):
            raise PermissionDenied
        # The button pressed is the one whose name is in the form.
        choice = next((name for name in DECISIONS if name in request.POST), None)
        if choice is None:
            self.message_user(request, f"No decision was sent: press one of {', '.join(DECISIONS)}.", messages.ERROR)
        elif _decide(request, approval, choice):
            self.message_user(request, f"Approval {DECISIONS[choice][2]}.", messages.SUCCESS)
        else:
            approval.refresh_from_db()
            self.message_user(
                request, f"Already {approval.status} by {approval.decided_by or 'nobody'}; left as it was.", messages.WARNING
            )
        return HttpResponseRedirect(reverse("admin:tools_approval_change", args=[approval.pk]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        approval = self.get_object(request, unquote(object_id))
        pending = approval is not None and approval.status == Approval.Status.PENDING
        extra_context = {**(extra_context or {}), "can_decide": pending and self.has_decide_permission(request, approval)}
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(ToolInvocation)
class ToolInvocationAdmin(admin.ModelAdmin):
    list_display = ("tool", "tenant", "agent", "status", "requested_by", "created_at", "finished_at")
    list_filter = ("status", "tool", "tenant")
    search_fields = ("tool", "tenant__slug", "agent__slug", "id")
    list_select_related = ("tenant", "agent")
    readonly_fields = [f.name for f in ToolInvocation._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
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
