import json

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from tenants.models import Agent, Tenant
from tenants.services import agent_create, api_key_create, tenant_create

# What an agent's model is called while the bundled fake model server answers it (`make run` without
# ANTHROPIC_API_KEY): the fake answers any model name, so the name can say what it really is.
FAKE_MODEL = "fake-echo"


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
        parser.add_argument(
            "--model-backend", choices=("fake", "anthropic"), default=None,
            help=f"Only name the existing agent's model for the server that answers it, issuing no key (idempotent): "
                 f"fake renames an Anthropic agent on BEAMCLAW_DEFAULT_MODEL to '{FAKE_MODEL}', anthropic gives an "
                 f"agent named '{FAKE_MODEL}' the default back; any other model is the operator's choice and stays. "
                 f'Prints {{"tenant", "agent", "model"}}.',
        )

    def handle(self, *args, slug, agent, model, name, exists_ok, model_backend, **options):
        if model_backend is not None:
            return self._name_model(slug=slug, agent_slug=agent, backend=model_backend)
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

    def _name_model(self, *, slug: str, agent_slug: str, backend: str) -> None:
        agent = Agent.objects.filter(tenant__slug=slug, slug=agent_slug).select_related("tenant").first()
        if agent is None:
            raise CommandError(f"Tenant '{slug}' has no agent '{agent_slug}'. Create it first: "
                               f"python manage.py create_tenant {slug} --agent {agent_slug} --exists-ok")
        default = settings.BEAMCLAW["DEFAULT_MODEL"]
        current, wanted = (default, FAKE_MODEL) if backend == "fake" else (FAKE_MODEL, default)
        if agent.provider == "anthropic" and agent.model == current:
            agent.model = wanted
            agent.save(update_fields=["model", "updated_at"])
        self.stdout.write(json.dumps({"tenant": agent.tenant.slug, "agent": agent.slug, "model": agent.model}))
