from django import forms
from django.contrib import admin, messages
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from beamclaw_project.errors import DomainError
from channels_app.accounts import (
    CONFIG_PARSERS,
    ChannelAccountInvalid,
    binding_create,
    binding_delete,
    binding_match_parse,
    binding_update,
    channel_account_create,
    channel_account_fields_parse,
    channel_account_update,
    pairing_approve,
)
from channels_app.models import Binding, ChannelAccount, ChannelReply, Pairing
from tenants.models import Agent


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


class ChannelAccountForm(forms.ModelForm):
    """The secret is write-only here too: `token` is never filled in, and left blank it keeps the current one.
    Name, token and settings are checked by the accounts service, so the admin refuses what the API refuses.

    A new account needs a token of either kind: the API shows a generated webhook secret once in its answer,
    which the admin has no safe place for (messages travel in a cookie)."""

    token = forms.CharField(
        required=False, strip=True, widget=forms.PasswordInput(render_value=False),
        help_text="discord: the bot token. webhook: the signing secret. Blank on an existing account keeps the "
                  "current one.",
    )

    class Meta:
        model = ChannelAccount
        fields = ["tenant", "kind", "name", "agent", "config", "enabled"]
        help_texts = {
            "config": 'discord: {"dm_policy": "pairing"|"allowlist"|"open"|"disabled", "allow_from": [ids], '
                      '"guilds": {"<guild id>": {"require_mention": true, "channels": [ids]}}, "approvers": [ids], '
                      '"queue_mode": "collect"}. webhook: {"callback_url": "https://…", "queue_mode": "followup"}.',
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None and "agent" in self.fields:
            self.fields["agent"].queryset = Agent.objects.filter(tenant=self.instance.tenant_id)

    def clean(self):
        data = super().clean()
        editing = self.instance.pk is not None
        tenant = self.instance.tenant if editing else data.get("tenant")
        kind = self.instance.kind if editing else data.get("kind")
        agent = data.get("agent")
        if agent and tenant and agent.tenant_id != tenant.pk:
            self.add_error("agent", f"Agent {agent} does not belong to tenant {tenant}.")
        if kind not in CONFIG_PARSERS:
            return data
        try:
            parsed = channel_account_fields_parse(
                kind=kind, name=data.get("name"), config=data.get("config") or {},
                secret=data.get("token") if data.get("token") or not editing else None,
            )
        except ChannelAccountInvalid as exc:
            self.add_error(exc.field if exc.field in ("name", "token") else "config", exc.message)
            return data
        data.update(parsed)
        # On a new account Django checks the unique name itself; editing, the tenant is read-only and so
        # left out of that check.
        if editing and ChannelAccount.objects.filter(tenant=tenant, name=parsed["name"]).exclude(pk=self.instance.pk).exists():
            self.add_error("name", f"{tenant} has a channel named '{parsed['name']}' already.")
        return data


class BindingForm(forms.ModelForm):
    class Meta:
        model = Binding
        fields = ["guild_id", "channel_id", "peer_id", "agent", "priority"]

    def clean(self):
        data = super().clean()
        if self.cleaned_data.get("DELETE") or not self.has_changed():
            return data
        try:
            binding_match_parse(**{k: data.get(k) or "" for k in ("guild_id", "channel_id", "peer_id")},
                                priority=data.get("priority") or 0)
        except ChannelAccountInvalid as exc:
            self.add_error(exc.field if exc.field in self.fields else None, exc.message)
        return data


class BindingInline(admin.TabularInline):
    model = Binding
    form = BindingForm
    extra = 0

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        # Only the account's tenant's agents: a binding cannot route to another tenant's agent.
        formset.form.base_fields["agent"].queryset = Agent.objects.filter(tenant=obj.tenant_id) if obj else Agent.objects.none()
        return formset


@admin.register(ChannelAccount)
class ChannelAccountAdmin(admin.ModelAdmin):
    form = ChannelAccountForm
    list_display = ("tenant", "kind", "name", "agent", "enabled", "status", "last_error")
    list_display_links = ("name",)
    list_filter = ("tenant", "kind", "status")
    search_fields = ("name", "tenant__slug", "agent__slug")
    list_select_related = ("tenant", "agent__tenant")
    readonly_fields = ("token_hint", "status", "last_error", "revision", "created_at", "updated_at")

    @admin.display(description="token")
    def token_hint(self, obj):
        return obj.secret_hint

    def get_readonly_fields(self, request, obj=None):
        # The service cannot move an account to another tenant or kind; a new account is the way.
        return (("tenant", "kind") if obj else ()) + self.readonly_fields

    def get_inlines(self, request, obj):
        # Bindings pick agents of the account's tenant, which a new account does not have yet.
        return [BindingInline] if obj else []

    @method_decorator(sensitive_post_parameters("token"))
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        try:
            if change:
                changes = {field: data[field] for field in ("name", "agent", "config", "enabled") if field in form.changed_data}
                if data.get("secret"):
                    changes["secret"] = data["secret"]
                # A fresh copy: the form has already written its raw values onto `obj`.
                account = channel_account_update(account=ChannelAccount.objects.get(pk=obj.pk), **changes)
            else:
                account = channel_account_create(
                    tenant=data["tenant"], kind=data["kind"], name=data["name"], agent=data["agent"],
                    secret=data["secret"], config=data["config"], enabled=data["enabled"],
                )
            obj.pk = account.pk
            obj.refresh_from_db()
        except DomainError as exc:  # a race with another writer: the form checked everything else
            messages.error(request, exc.message)

    def save_formset(self, request, form, formset, change):
        if formset.model is not Binding:
            return super().save_formset(request, form, formset, change)
        # What formset.save() would have recorded, for the admin's change message.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for inline_form in formset.forms:
            binding, data = inline_form.instance, inline_form.cleaned_data
            if not data or (binding.pk is None and data.get("DELETE")):
                continue
            fields = {k: data.get(k) or "" for k in ("guild_id", "channel_id", "peer_id")}
            try:
                if data.get("DELETE"):
                    binding_delete(binding=binding)
                    formset.deleted_objects.append(binding)
                elif binding.pk is None:
                    binding = binding_create(account=form.instance, agent=data["agent"], priority=data["priority"], **fields)
                    formset.new_objects.append(binding)
                elif inline_form.has_changed():
                    binding_update(binding=binding, agent=data["agent"], priority=data["priority"], **fields)
                    formset.changed_objects.append((binding, inline_form.changed_data))
            except DomainError as exc:
                messages.error(request, exc.message)


@admin.register(Pairing)
class PairingAdmin(admin.ModelAdmin):
    """Read-only but for approving: codes come from the bot, and an approval goes through the service.
    Deleting an approved pairing takes the sender's access back (their next DM gets a new code)."""

    list_display = ("account", "sender_id", "sender_name", "code", "status", "expires_at")
    list_filter = ("status", "account__tenant", "account")
    search_fields = ("code", "sender_id", "sender_name", "account__name")
    list_select_related = ("account__tenant",)
    readonly_fields = [f.name for f in Pairing._meta.fields]
    actions = ["approve_pairings"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_approve_permission(self, request):
        # The form is read-only for everyone, but approving is a change: it needs the change permission.
        return request.user.has_perm("channels_app.change_pairing")

    @admin.action(description="Approve selected pairings", permissions=["approve"])
    def approve_pairings(self, request, queryset):
        approved = 0
        for pairing in queryset.select_related("account"):
            if pairing.status == Pairing.Status.APPROVED:
                continue
            try:
                pairing_approve(code=pairing.code, account=pairing.account)
                approved += 1
            except DomainError as exc:
                messages.error(request, f"{pairing.sender_name or pairing.sender_id} on {pairing.account}: {exc.message}")
        if approved:
            messages.success(request, f"Approved {approved} pairing(s): those senders' DMs now reach the agent.")
