from django.contrib import admin

from sessions.models import AgentSession, Message, Run, ToolCall


class MessageInline(admin.TabularInline):
    """The session transcript, in order."""

    model = Message
    extra = 0
    fields = ("seq", "role", "text_preview", "run", "usage", "created_at")
    readonly_fields = fields
    ordering = ("seq",)
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="text")
    def text_preview(self, obj):
        text = obj.text
        return text if len(text) <= 500 else text[:500] + "…"


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


@admin.register(AgentSession)
class AgentSessionAdmin(admin.ModelAdmin):
    list_display = ("key", "tenant", "agent", "status", "ephemeral", "queue_mode", "input_tokens", "output_tokens", "updated_at")
    list_filter = ("status", "ephemeral", "queue_mode", "tenant")
    search_fields = ("key", "tenant__slug", "agent__slug", "id")
    list_select_related = ("tenant", "agent")
    readonly_fields = ("id", "next_seq", "input_tokens", "output_tokens", "created_at", "updated_at")
    inlines = [MessageInline, RunInline]


class ToolCallInline(admin.TabularInline):
    model = ToolCall
    extra = 0
    fields = ("step", "name", "status", "input", "output", "decided_by", "finished_at")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "session", "status", "trigger", "step", "input_tokens", "output_tokens", "created_at", "finished_at")
    list_filter = ("status", "trigger", "tenant")
    search_fields = ("id", "session__key", "tenant__slug", "error")
    list_select_related = ("tenant", "session")
    readonly_fields = [f.name for f in Run._meta.fields]
    inlines = [ToolCallInline]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False  # runs start from a message, through the API


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("session", "seq", "role", "run", "created_at")
    list_filter = ("role",)
    search_fields = ("session__key", "session__id")
    list_select_related = ("session", "run")
    readonly_fields = [f.name for f in Message._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(ToolCall)
class ToolCallAdmin(admin.ModelAdmin):
    list_display = ("name", "run", "step", "status", "created_at", "finished_at")
    list_filter = ("status", "name")
    search_fields = ("name", "tool_use_id", "run__id")
    readonly_fields = [f.name for f in ToolCall._meta.fields]
