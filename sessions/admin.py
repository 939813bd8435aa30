"""Sessions, runs, messages and tool calls in the Django admin.

What happened is history: transcripts, runs, tool calls and token counters are shown, never edited (an
edit here would bypass the run engine's locks and leave the transcript out of step with its runs). A
session's only setting is its queue mode, as in the REST API. Where an operator acts, the admin calls the
engine's own service: Abort is `run_abort`, the same call the REST and WebSocket edges make.

Links stay inside the tenant: a session's parent and children are shown as links, never as a dropdown
(which would list every session of every tenant), and only when they belong to the session's tenant.
"""

import json

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from sessions.models import AgentSession, Message, Run, ToolCall
from sessions.runs import run_abort

# A block longer than this is cut in lists and inlines; a message's own page shows it whole.
PREVIEW_CHARS = 500


def _cut(text: str, limit: int | None) -> str:
    return text if limit is None or len(text) <= limit else text[:limit] + "…"


def _result_text(content) -> str:
    # A tool_result's content is a string or a list of blocks (text, and images a tool may return).
    if isinstance(content, str):
        return content
    return "\n".join(
        b.get("text", "") if b.get("type") == "text" else f"[{b.get('type', 'block')}]"
        for b in content or [] if isinstance(b, dict)
    )


def _block_row(block, limit: int | None) -> tuple[str, str]:
    """(label, text) of one Anthropic content block, as an operator reads it."""
    if not isinstance(block, dict):
        return "?", _cut(str(block), limit)
    kind = block.get("type")
    if kind == "text":
        return "", _cut(block.get("text", ""), limit)
    if kind == "tool_use":
        return f"tool call: {block.get('name', '?')}", _cut(json.dumps(block.get("input", {}), ensure_ascii=False), limit)
    if kind == "tool_result":
        label = "tool error" if block.get("is_error") else "tool result"
        return label, _cut(_result_text(block.get("content")), limit)
    if kind == "image":
        source = block.get("source") or {}
        return "image", source.get("url") or source.get("media_type", "")
    return kind or "?", ""


def content_html(content, *, limit: int | None = PREVIEW_CHARS):
    """Every block of a message: text as it is, tool calls with their input, tool results with their text."""
    rows = (_block_row(block, limit) for block in content or [])
    return format_html_join(
        "", '<div style="white-space: pre-wrap; margin-bottom: .4em">{}{}</div>',
        ((format_html("<strong>{}</strong> ", label) if label else "", text) for label, text in rows),
    )


def _session_link(session: AgentSession):
    url = reverse("admin:agent_sessions_agentsession_change", args=[session.pk])
    return format_html('<a href="{}">{}</a>', url, session.key)


class MessageInline(admin.TabularInline):
    """The session transcript, in order."""

    model = Message
    extra = 0
    fields = ("seq", "role", "content_view", "run", "usage", "created_at")
    readonly_fields = fields
    ordering = ("seq",)
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="content")
    def content_view(self, obj):
        return content_html(obj.content)


class RunInline(admin.TabularInline):
    model = Run
    extra = 0
    fields = ("id", "status", "trigger", "step", "input_tokens", "output_tokens", "error", "created_at", "finished_at")
    readonly_fields = fields
    can_delete = False
    show_change_link = True
    ordering = ("-created_at",)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(AgentSession)
class AgentSessionAdmin(admin.ModelAdmin):
    list_display = ("key", "tenant", "agent", "status", "ephemeral", "queue_mode", "input_tokens", "output_tokens", "updated_at")
    list_filter = ("tenant", "status", "ephemeral", "queue_mode")
    search_fields = ("key", "tenant__slug", "agent__slug", "id")
    list_select_related = ("tenant", "agent")
    fields = ("id", "key", "tenant", "agent", "status", "ephemeral", "queue_mode", "parent_link", "spawned_by", "label",
              "children_links", "next_seq", "input_tokens", "output_tokens", "created_at", "updated_at")
    # Everything but the queue mode: the REST API lets a tenant change only that too.
    readonly_fields = tuple(name for name in fields if name != "queue_mode")
    inlines = [MessageInline, RunInline]

    def has_add_permission(self, request):
        return False  # sessions start from the API, a channel or a cron job

    @admin.display(description="parent")
    def parent_link(self, obj):
        parent = obj.parent
        if parent is None or parent.tenant_id != obj.tenant_id:
            return "-"
        return _session_link(parent)

    @admin.display(description="sub-agent sessions")
    def children_links(self, obj):
        children = obj.children.filter(tenant_id=obj.tenant_id).order_by("created_at")
        return format_html_join(", ", "{}", ((_session_link(child),) for child in children)) or "-"


class ToolCallInline(admin.TabularInline):
    model = ToolCall
    extra = 0
    fields = ("step", "name", "status", "input", "output", "decided_by", "finished_at")
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def _abort(request, run: Run) -> bool:
    """Abort through the engine's service; False when the run had already ended."""
    if run.is_terminal:
        return False
    run_abort(run=run, reason=f"aborted by admin:{request.user.get_username()}")
    return True


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    """Runs are history, but for Abort (a list action and a button on the run's page)."""

    list_display = ("id", "tenant", "session", "status", "trigger", "step", "input_tokens", "output_tokens", "created_at", "finished_at")
    list_filter = ("tenant", "status", "trigger")
    search_fields = ("id", "session__key", "tenant__slug", "error")
    list_select_related = ("tenant", "session")
    readonly_fields = [f.name for f in Run._meta.fields]
    inlines = [ToolCallInline]
    date_hierarchy = "created_at"
    actions = ["abort_runs"]

    def has_add_permission(self, request):
        return False  # runs start from a message, through the API

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # A run still going is ended by Abort; deleting it would pull its rows from under the engine.
        return (obj is None or obj.is_terminal) and super().has_delete_permission(request, obj)

    def has_abort_permission(self, request, obj=None):
        # The form is read-only for everyone; aborting changes the run, so it takes the change permission.
        return request.user.has_perm("agent_sessions.change_run")

    @admin.action(description="Abort selected runs", permissions=["abort"])
    def abort_runs(self, request, queryset):
        aborted = sum(_abort(request, run) for run in queryset)
        self.message_user(request, f"Aborted {aborted} run(s); one that is streaming stops at its next event.", messages.SUCCESS)
        if aborted < len(queryset):
            self.message_user(request, f"{len(queryset) - aborted} had already ended and were left as they were.", messages.WARNING)

    def get_urls(self):
        abort = path("<path:object_id>/abort/", self.admin_site.admin_view(self.abort_view), name="agent_sessions_run_abort")
        return [abort, *super().get_urls()]

    def abort_view(self, request, object_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        run = self.get_object(request, unquote(object_id))
        if run is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_abort_permission(request, run):
            raise PermissionDenied
        if _abort(request, run):
            self.message_user(request, "Aborted; a streaming step stops at its next event.", messages.SUCCESS)
        else:
            self.message_user(request, f"The run had already ended ({run.status}).", messages.WARNING)
        return HttpResponseRedirect(reverse("admin:agent_sessions_run_change", args=[run.pk]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = self.get_object(request, unquote(object_id))
        extra_context = {
            **(extra_context or {}),
            "can_abort": run is not None and not run.is_terminal and self.has_abort_permission(request, run),
        }
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("session", "seq", "role", "content_preview", "run", "created_at")
    list_filter = ("session__tenant", "role")
    search_fields = ("session__key", "session__id")
    list_select_related = ("session", "run")
    fields = ("session", "seq", "role", "content_view", "content", "run", "step", "usage", "excluded_reason", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="content")
    def content_preview(self, obj):
        return content_html(obj.content, limit=120)

    @admin.display(description="as read")
    def content_view(self, obj):
        return content_html(obj.content, limit=None)


@admin.register(ToolCall)
class ToolCallAdmin(admin.ModelAdmin):
    list_display = ("name", "run", "step", "status", "created_at", "finished_at")
    list_filter = ("run__tenant", "status", "name")
    search_fields = ("name", "tool_use_id", "run__id")
    list_select_related = ("run",)
    readonly_fields = [f.name for f in ToolCall._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
