from django import forms
from django.contrib import admin, messages
from django.utils import timezone

from sessions.providers import provider_names
from tenants.models import Agent, ApiKey, Tenant
from tenants.scopes import Scope
from tenants.services import api_key_create


class AgentForm(forms.ModelForm):
    # The registered providers (built-ins and plug-ins), not a fixed list.
    provider = forms.ChoiceField(choices=lambda: [(name, name) for name in provider_names()])

    class Meta:
        model = Agent
        fields = "__all__"


class AgentInlineForm(AgentForm):
    # Narrow boxes: four columns fit beside the admin's menu on a laptop screen.
    class Meta(AgentForm.Meta):
        widgets = {name: forms.TextInput(attrs={"size": 18}) for name in ("slug", "name", "model")}


class AgentInline(admin.TabularInline):
    """The tenant's agents at a glance; the rest of an agent (prompt, tools, approvals, sandbox) is on its own
    page, one click away."""

    model = Agent
    form = AgentInlineForm
    extra = 0
    fields = ("slug", "name", "provider", "model")
    show_change_link = True


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ("name", "prefix", "scopes", "rate_limit_per_minute", "created_at", "last_used_at", "revoked_at")
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
    form = AgentForm
    list_display = ("slug", "tenant", "provider", "model", "max_tokens", "updated_at")
    list_filter = ("provider", "model", "tenant")
    search_fields = ("slug", "name", "tenant__slug", "model")
    list_select_related = ("tenant",)


class ApiKeyForm(forms.ModelForm):
    # Checkboxes instead of the array field's comma-separated text box.
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices, widget=forms.CheckboxSelectMultiple, initial=list(Scope.values),
        help_text="read: view everything; chat: talk to agents; admin: agents, keys, cron, approvals.",
    )

    class Meta:
        model = ApiKey
        fields = ("tenant", "name", "scopes", "rate_limit_per_minute")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """The operator's place for keys: the only one where a key's scopes or request rate can go up."""

    form = ApiKeyForm
    list_display = ("__str__", "tenant", "name", "scope_list", "rate_limit_per_minute", "created_at", "last_used_at", "revoked_at")
    list_filter = ("tenant", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("prefix", "name", "tenant__slug")
    list_select_related = ("tenant",)
    actions = ["revoke"]

    @admin.display(description="scopes")
    def scope_list(self, obj) -> str:
        return ", ".join(obj.scopes)

    def get_fields(self, request, obj=None):
        issued = ("tenant", "name", "scopes", "rate_limit_per_minute")
        return issued if obj is None else (*issued, "prefix", "created_by", "created_at", "last_used_at", "revoked_at")

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else ("tenant", "prefix", "created_by", "created_at", "last_used_at", "revoked_at")

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        issued = api_key_create(
            tenant=obj.tenant, name=obj.name, scopes=obj.scopes, rate_limit_per_minute=obj.rate_limit_per_minute
        )
        obj.pk = issued.api_key.pk
        obj.refresh_from_db()
        messages.warning(request, f"New API key (shown only this once, copy it now): {issued.raw_key}")

    @admin.action(description="Revoke selected API keys")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).")
