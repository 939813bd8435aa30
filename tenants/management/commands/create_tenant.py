import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from tenants.models import Agent, Tenant
from tenants.services import agent_create, api_key_create, tenant_create


class Command(BaseCommand):
    help = 'Create a tenant with a default agent and an API key; prints {"tenant", "agent", "api_key"} as JSON.'

    def add_arguments(self, parser):
        parser.add_argument("slug", help="Tenant slug: lowercase letters, digits and hyphens.")
        parser.add_argument("--agent", default="default", help="Slug of the agent to create (default: default).")
        parser.add_argument("--model", default=None, help="Model of the agent (default: BEAMCLAW_DEFAULT_MODEL).")
        parser.add_argument("--name", default="", help="Display name of the tenant.")
        parser.add_argument(
            "--exists-ok", action="store_true",
            help="If the tenant exists, make sure the agent exists and issue a new API key instead of failing.",
        )

    def handle(self, *args, slug, agent, model, name, exists_ok, **options):
        existing = Tenant.objects.filter(slug=slug).first()
        try:
            if existing is None:
                tenant, agent_obj, issued = tenant_create(slug=slug, name=name, agent_slug=agent, model=model)
            elif exists_ok:
                with transaction.atomic():
                    tenant = existing
                    agent_obj = Agent.objects.filter(tenant=tenant, slug=agent).first() or agent_create(
                        tenant=tenant, slug=agent, model=model
                    )
                    issued = api_key_create(tenant=tenant, name="create_tenant")
            else:
                raise CommandError(f"Tenant '{slug}' already exists. Pass --exists-ok to issue a new API key for it.")
        except ValidationError as exc:
            raise CommandError("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items()))
        self.stdout.write(json.dumps({"tenant": tenant.slug, "agent": agent_obj.slug, "api_key": issued.raw_key}))
