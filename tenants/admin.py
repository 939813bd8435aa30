from django.contrib import admin, messages
from django.utils import timezone

from tenants.models import Agent, ApiKey, Tenant
from tenants.services import api_key_create


class AgentInline(admin.TabularInline):
    model = Agent
    extra = 0
    fields = ("slug", "name", "provider", "model", "max_tokens")
    show_change_link = True


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ("name", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False  # keys are issued from the API key admin, which shows the secret once


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "status", "max_concurrent_runs", "daily_token_budget", "created_at")
    list_filter = ("status",)
    search_fields = ("slug", "name")
    inlines = [AgentInline, ApiKeyInline]


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ("slug", "tenant", "provider", "model", "max_tokens", "updated_at")
    list_filter = ("provider", "model", "tenant")
    search_fields = ("slug", "name", "tenant__slug", "model")
    list_select_related = ("tenant",)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("__str__", "tenant", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = ("tenant", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("prefix", "name", "tenant__slug")
    list_select_related = ("tenant",)
    actions = ["revoke"]

    def get_fields(self, request, obj=None):
        return ("tenant", "name") if obj is None else ("tenant", "name", "prefix", "created_at", "last_used_at", "revoked_at")

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else ("tenant", "prefix", "created_at", "last_used_at", "revoked_at")

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        issued = api_key_create(tenant=obj.tenant, name=obj.name)
        obj.pk = issued.api_key.pk
        obj.refresh_from_db()
        messages.warning(request, f"New API key (shown only this once, copy it now): {issued.raw_key}")

    @admin.action(description="Revoke selected API keys")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).")
