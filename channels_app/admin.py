from django.contrib import admin

from channels_app.models import ChannelReply


@admin.register(ChannelReply)
class ChannelReplyAdmin(admin.ModelAdmin):
    """Read-only: what each conversation was sent, and why a reply failed."""

    list_display = ("run", "kind", "status", "attempts", "error", "created_at", "delivered_at")
    list_filter = ("status", "kind", "tenant")
    search_fields = ("error", "remote_id")
    readonly_fields = [f.name for f in ChannelReply._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
