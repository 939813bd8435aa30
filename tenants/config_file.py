"""beamclaw.yaml: tenants, their agents, channels and cron jobs declared in one file (docs/config.md).

Invariants, and why:
- Nothing is written unless the whole file is valid. Every problem is collected first, each with the file's
  line and the path in the file (`tenants.acme.agents.support.model`), so one run shows all of them.
- The file's values go through the checks the REST API applies (the agent field cleaners, the channel
  accounts service's parsers, cron's schedule and delivery parsers), and the writes through the same
  services (agent_create, channel_account_create/update, binding_create/delete, cron_job_create/update/
  delete), so a file refuses what the API refuses, in the same words.
- One apply is one transaction: the plan is computed again under it and applied whole or not at all. Beat's
  rows are written by cron's post_save receiver inside that transaction, so they commit (or roll back) with
  their jobs; the wake-ups that must not run for a rolled-back change (run_discord's reload, a new tenant's
  queue) are sent on commit.
- The file is the whole truth for what it names: a field left out has its default. Objects of its tenants
  that it does not name are deleted only with `prune`; tenants are never deleted (a tenant's history is
  not a configuration). API keys are not configuration: they are shown once, when issued.
- Secrets never leave the database in clear. Export writes `${BEAMCLAW_SECRET_...}` references; a secret
  field whose variable is unset keeps the stored secret (the plan says so), so an exported file applies as
  "no changes" without the secrets at hand. Any other `${VAR}` must be set.
- Applying what export wrote changes nothing: the plan compares, and export writes, each object's state as
  _agent_state & co. read it, normalized by the cleaners the file's values go through.
"""

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

import yaml
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.exceptions import ValidationError as ApiValidationError

from beamclaw_project.errors import DomainError
from channels_app.accounts import (
    CONFIG_PARSERS,
    binding_create,
    binding_delete,
    binding_match_parse,
    channel_account_create,
    channel_account_fields_parse,
    channel_account_update,
)
from channels_app.models import Binding, ChannelAccount
from channels_app.outbound import MAX_TO_LENGTH
from cron.delivery import DeliveryTargetError, deliver_parse, deliver_public
from cron.models import CronJob
from cron.schedule import At, Every, ScheduleError, schedule_parse
from cron.services import cron_job_create, cron_job_delete, cron_job_update
from sessions.models import AgentSession
from sessions.providers import provider_names
from sessions.providers.chain import base_url_clean, fallbacks_clean
from sessions.runs.compaction import compaction_config_clean
from tenants.models import Agent, Tenant, default_approval, default_sandbox, default_tool_policy, slug_validator
from tenants.queues import announce_queue
from tenants.services import agent_create, approval_clean, sandbox_clean, tool_policy_clean
from tools.skills import skills_config_clean, skills_dirs_clean

FORMAT_VERSION = 1
_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class _Keep:
    """A secret whose `${VAR}` is unset: the stored secret stays."""

    variable: str


@dataclass(frozen=True)
class ConfigError:
    path: str
    line: int | None
    message: str

    def render(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line else filename
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigInvalid(Exception):
    """The file (or, at apply time, the database) refuses the configuration; `errors` lists every problem."""

    def __init__(self, errors: list[ConfigError]):
        super().__init__(f"{len(errors)} error(s)")
        self.errors = errors


# --- reading the file ----------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML 1.2's booleans (true/false only: `mode: off` stays the string "off") and no implicit timestamps
    (an `at` stays the ISO 8601 text it was written as)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _path_text(path: tuple) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.match(str(part)):
            text += f".{part}" if text else str(part)
        else:
            text += f"[{json.dumps(str(part))}]"
    return text


def _secret_position(path: tuple) -> bool:
    """Where a `${VAR}` that is unset keeps the stored secret rather than being an error."""
    return (
        (len(path) == 5 and path[2] == "agents" and path[4] == "api_key")
        or (len(path) == 5 and path[2] == "channels" and path[4] == "token")
        or (len(path) >= 6 and path[2] == "cron_jobs" and path[4] == "deliver" and (path[5] == "secret" or (path[5] == "headers" and len(path) == 7)))
    )


class _Reader:
    """The document as plain values, with each path's line, and `${VAR}`s substituted from `environ`."""

    def __init__(self, environ):
        self.environ = environ
        self.lines: dict[tuple, int] = {}
        self.errors: list[ConfigError] = []
        self.referenced: set[tuple] = set()  # paths whose value came (partly) from the environment

    def error(self, path: tuple, message: str, *, line: int | None = None) -> None:
        self.errors.append(ConfigError(_path_text(path), line or self.line(path), message))

    def line(self, path: tuple) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def value(self, loader: _Loader, node: yaml.Node, path: tuple, *, line: int | None = None):
        # A mapping's entry is where its key is written (its value may start on the next line).
        self.lines[path] = line or node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)
            result = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                if isinstance(key, (dict, list)) or key is None:
                    self.error(path, "a key must be a plain value", line=key_node.start_mark.line + 1)
                    continue
                key = str(key)
                if key in result:
                    self.error((*path, key), f"given twice (again on line {key_node.start_mark.line + 1})",
                               line=self.lines.get((*path, key)))
                    continue
                result[key] = self.value(loader, value_node, (*path, key), line=key_node.start_mark.line + 1)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.value(loader, item, (*path, index)) for index, item in enumerate(node.value)]
        scalar = loader.construct_object(node, deep=True)
        return self.substitute(scalar, path) if isinstance(scalar, str) else scalar

    def substitute(self, text: str, path: tuple):
        whole = _REFERENCE.fullmatch(text)
        if whole and whole.group(1) and whole.group(1) not in self.environ and _secret_position(path):
            return _Keep(whole.group(1))

        def replace(match):
            name = match.group(1)
            if name is None:
                return "$"
            self.referenced.add(path)
            if name not in self.environ:
                self.error(path, f"the environment variable {name} is not set (the file refers to ${{{name}}})")
                return ""
            return self.environ[name]

        return _REFERENCE.sub(replace, text)


def _escape(text: str) -> str:
    """A string as the file must spell it so that reading it gives it back: `$` doubled where a `$$` or
    `${` would otherwise be read as a reference."""
    return text.replace("$", "$$") if "$$" in text or "${" in text else text


# --- validating ------------------------------------------------------------------------------------------------


@dataclass
class Spec:
    """One object as the file wants it: `fields` hold normalized values (a secret may be a _Keep)."""

    kind: str
    label: str
    path: tuple
    line: int | None
    fields: dict
    extra: dict = field(default_factory=dict)


@dataclass
class TenantSpec(Spec):
    agents: dict[str, Spec] = field(default_factory=dict)
    channels: dict[str, Spec] = field(default_factory=dict)
    cron_jobs: dict[tuple, Spec] = field(default_factory=dict)


@dataclass
class Desired:
    filename: str
    tenants: dict[str, TenantSpec]
    warnings: list[ConfigError]
    lines: dict[tuple, int] = field(default_factory=dict)
    # What the file alone shows to be wrong; the plan adds what only the database can tell (references).
    errors: list[ConfigError] = field(default_factory=list)


def _messages(exc) -> str:
    """The words of a Django, DRF or domain validation error, as one line."""
    if isinstance(exc, DomainError):
        return exc.message
    if isinstance(exc, DjangoValidationError):
        return " ".join(exc.messages)
    detail = exc.detail

    def flat(value):
        if isinstance(value, dict):
            return [f"{key}: {text}" for key, item in value.items() for text in flat(item)]
        if isinstance(value, list):
            return [text for item in value for text in flat(item)]
        return [str(value)]

    return " ".join(flat(detail))


TENANT_KEYS = ("name", "status", "max_concurrent_runs", "daily_token_budget", "agents", "channels", "cron_jobs")
AGENT_KEYS = ("name", "provider", "model", "fallbacks", "base_url", "api_key", "system_prompt", "max_tokens",
              "tool_policy", "approval", "skills_dirs", "skills", "compaction", "sandbox")
CHANNEL_KEYS = ("kind", "agent", "token", "enabled", "bindings")
CRON_KEYS = ("name", "agent", "prompt", "schedule", "session_target", "deliver", "enabled", "timeout_seconds")


# The agent API checks tool_policy, approval and sandbox in its serializer (an edge, which this module may not
# import); these are those checks, in the words the API uses.


def _agent_defaults() -> dict:
    return {
        "name": "", "provider": "anthropic", "fallbacks": [], "base_url": "", "api_key": "",
        "system_prompt": Agent._meta.get_field("system_prompt").get_default(),
        "max_tokens": Agent._meta.get_field("max_tokens").get_default(),
        "tool_policy": default_tool_policy(), "approval": default_approval(), "skills_dirs": [], "skills": {},
        "compaction": {}, "sandbox": default_sandbox(),
    }


# The checks of the agent's structured fields, as the agent API runs them (tenants/serializers.py).
_AGENT_CLEANERS: dict[str, Callable] = {
    "fallbacks": fallbacks_clean, "base_url": base_url_clean, "tool_policy": tool_policy_clean,
    "approval": approval_clean, "skills_dirs": skills_dirs_clean, "skills": skills_config_clean,
    "compaction": compaction_config_clean, "sandbox": sandbox_clean,
}


class _Validator:
    def __init__(self, reader: _Reader, document):
        self.reader = reader
        self.document = document
        self.warnings: list[ConfigError] = []

    def error(self, path: tuple, message: str) -> None:
        self.reader.error(path, message)

    def warn(self, path: tuple, message: str) -> None:
        self.warnings.append(ConfigError(_path_text(path), self.reader.line(path), message))

    def mapping(self, value, path: tuple, *, what: str, keys: tuple | None = None) -> dict | None:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping ({what})")
            return None
        if keys is not None:
            for key in value:
                if key not in keys:
                    self.error((*path, key), f"unknown key; {what} has {', '.join(keys)}")
        return value

    def string(self, data: dict, key: str, path: tuple, *, required=False, default="", max_length: int | None = None):
        """A string field; a required one must not be blank."""
        value = data.get(key)
        if value is None:
            if required:
                self.error((*path, key), "required: must be a non-empty string")
            return default
        if not isinstance(value, str) or (required and not value.strip()):
            self.error((*path, key), "must be a non-empty string" if required else "must be a string")
            return default
        if max_length is not None and len(value) > max_length:
            self.error((*path, key), f"must be at most {max_length} characters (got {len(value)})")
            return default
        return value

    def integer(self, data: dict, key: str, path: tuple, *, default, lo: int, hi: int, nullable=False):
        if key not in data:
            return default
        value = data[key]
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.error((*path, key), f"must be a whole number from {lo} to {hi}" + (" (or null)" if nullable else ""))
            return default
        return value

    def boolean(self, data: dict, key: str, path: tuple, *, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            self.error((*path, key), "must be true or false")
            return default
        return value

    def no_clear_secret(self, value, path: tuple) -> None:
        if isinstance(value, str) and value and path not in self.reader.referenced:
            self.warn(path, "a secret written in clear; put it in the environment and write ${VARIABLE} instead")

    # --- the document ---

    def run(self, filename: str) -> Desired:
        root = self.mapping(self.document, (), what="the file", keys=("version", "tenants"))
        tenants: dict[str, TenantSpec] = {}
        if root is None:
            return Desired(filename, tenants, self.warnings, self.reader.lines)
        if root.get("version", FORMAT_VERSION) != FORMAT_VERSION:
            self.error(("version",), f"this BeamClaw reads version {FORMAT_VERSION} of the format")
        tenants_data = self.mapping(root.get("tenants"), ("tenants",), what="tenant slug: its settings")
        for slug, data in (tenants_data or {}).items():
            path = ("tenants", slug)
            try:
                slug_validator(str(slug))
            except DjangoValidationError as exc:
                self.error(path, f"not a tenant slug: {_messages(exc)}")
                continue
            spec = self.tenant(str(slug), data, path)
            if spec is not None:
                tenants[str(slug)] = spec
        return Desired(filename, tenants, self.warnings, self.reader.lines)

    def tenant(self, slug: str, data, path: tuple) -> TenantSpec | None:
        data = self.mapping(data, path, what="a tenant", keys=TENANT_KEYS)
        if data is None:
            return None
        status = data.get("status", Tenant.Status.ACTIVE)
        if status not in Tenant.Status.values:
            self.error((*path, "status"), f"must be one of {', '.join(Tenant.Status.values)}")
        fields = {
            "name": self.string(data, "name", path, default=slug, max_length=200),
            "status": status,
            "max_concurrent_runs": self.integer(data, "max_concurrent_runs", path, default=10, lo=0, hi=2**31 - 1),
            "daily_token_budget": self.integer(data, "daily_token_budget", path, default=None, lo=0, hi=2**63 - 1, nullable=True),
        }
        spec = TenantSpec("tenant", slug, path, self.reader.line(path), fields)
        agents = self.mapping(data.get("agents"), (*path, "agents"), what="agent slug: its settings") or {}
        for agent_slug, agent_data in agents.items():
            agent_path = (*path, "agents", agent_slug)
            try:
                slug_validator(str(agent_slug))
            except DjangoValidationError as exc:
                self.error(agent_path, f"not an agent slug: {_messages(exc)}")
                continue
            agent = self.agent(slug, str(agent_slug), agent_data, agent_path)
            if agent is not None:
                spec.agents[str(agent_slug)] = agent
        channels = self.mapping(data.get("channels"), (*path, "channels"), what="channel name: its settings") or {}
        for name, channel_data in channels.items():
            channel = self.channel(slug, str(name), channel_data, (*path, "channels", name))
            if channel is not None:
                spec.channels[channel.fields["name"]] = channel
        jobs = data.get("cron_jobs") or []
        if not isinstance(jobs, list):
            self.error((*path, "cron_jobs"), "must be a list of cron jobs")
            jobs = []
        for index, job_data in enumerate(jobs):
            job = self.cron_job(slug, job_data, (*path, "cron_jobs", index))
            if job is None:
                continue
            key = (job.fields["agent"], job.fields["name"])
            if key in spec.cron_jobs:
                self.error((*path, "cron_jobs", index, "name"),
                           f"agent '{key[0]}' has two jobs named '{key[1]}' (the other is at line {spec.cron_jobs[key].line})")
                continue
            spec.cron_jobs[key] = job
        return spec

    def agent(self, tenant: str, slug: str, data, path: tuple) -> Spec | None:
        data = self.mapping(data, path, what="an agent", keys=AGENT_KEYS)
        if data is None:
            return None
        fields = _agent_defaults()
        fields["name"] = self.string(data, "name", path, max_length=200)
        fields["model"] = self.string(data, "model", path, required=True, max_length=128)
        provider = self.string(data, "provider", path, default="anthropic")
        if provider not in provider_names():
            self.error((*path, "provider"), f"unknown provider '{provider}'; supported: {', '.join(provider_names())}")
        fields["provider"] = provider
        fields["system_prompt"] = self.string(data, "system_prompt", path, default=fields["system_prompt"])
        fields["max_tokens"] = self.integer(data, "max_tokens", path, default=fields["max_tokens"], lo=1, hi=200000)
        api_key = data.get("api_key") or ""
        if not isinstance(api_key, (str, _Keep)) or (isinstance(api_key, str) and len(api_key) > 500):
            self.error((*path, "api_key"), "must be a string of at most 500 characters, e.g. ${SUPPORT_MODEL_KEY}")
        else:
            self.no_clear_secret(api_key, (*path, "api_key"))
            fields["api_key"] = api_key
        for key, clean in _AGENT_CLEANERS.items():
            if key in data and data[key] is not None:
                try:
                    fields[key] = clean(data[key])
                except ApiValidationError as exc:
                    self.error((*path, key), _messages(exc))
        return Spec("agent", f"{tenant}/{slug}", path, self.reader.line(path), fields)

    def channel(self, tenant: str, name: str, data, path: tuple) -> Spec | None:
        data = self.mapping(data, path, what="a channel")
        if data is None:
            return None
        kind = data.get("kind")
        if kind not in CONFIG_PARSERS:
            self.error((*path, "kind"), f"required: one of {', '.join(CONFIG_PARSERS)}")
            return None
        fields = {"kind": kind, "enabled": self.boolean(data, "enabled", path, default=True)}
        try:
            fields["name"] = channel_account_fields_parse(kind=kind, name=name)["name"]
        except DomainError as exc:
            self.error(path, exc.message)
            return None
        fields["agent"] = self.string(data, "agent", path, required=True, max_length=63)
        token = data.get("token")
        if isinstance(token, _Keep):
            fields["token"] = token
        elif token is None:
            what = "the bot token" if kind == "discord" else "the signing secret"
            self.error((*path, "token"), f"required: {what}, as a reference such as ${{{_variable(tenant, 'channel', name, 'token')}}}")
        else:
            try:
                fields["token"] = channel_account_fields_parse(kind=kind, secret=token)["secret"]
                self.no_clear_secret(token, (*path, "token"))
            except DomainError as exc:
                self.error((*path, "token"), exc.message)
        config = {key: value for key, value in data.items() if key not in CHANNEL_KEYS}
        try:
            fields["config"] = CONFIG_PARSERS[kind](config)
        except DomainError as exc:
            self.error((*path, exc.field) if exc.field in config else path, exc.message)
        bindings = data.get("bindings") or []
        if not isinstance(bindings, list):
            self.error((*path, "bindings"), 'must be a list of {"match": {...}, "agent": ..., "priority"?: N}')
            bindings = []
        parsed = [(index, self.binding(item, (*path, "bindings", index))) for index, item in enumerate(bindings)]
        parsed = [(index, binding) for index, binding in parsed if binding is not None]
        # Bindings have no name: the set is the channel's, compared in one order.
        fields["bindings"] = sorted((binding for _, binding in parsed), key=_binding_order)
        return Spec("channel", f"{tenant}/{fields['name']}", path, self.reader.line(path), fields,
                    {"binding_agents": [(index, binding["agent"]) for index, binding in parsed]})

    def binding(self, data, path: tuple) -> dict | None:
        data = self.mapping(data, path, what="a binding", keys=("match", "agent", "priority"))
        if data is None:
            return None
        match = self.mapping(data.get("match"), (*path, "match"), what="guild_id, channel_id, peer_id",
                             keys=("guild_id", "channel_id", "peer_id"))
        agent = self.string(data, "agent", path, required=True)
        if match is None:
            return None
        try:
            parsed = binding_match_parse(**{key: value for key, value in match.items() if key in ("guild_id", "channel_id", "peer_id")},
                                         priority=data.get("priority", 0))
        except DomainError as exc:
            self.error((*path, exc.field) if exc.field == "priority" else (*path, "match"), exc.message)
            return None
        return {**parsed, "agent": agent}

    def cron_job(self, tenant: str, data, path: tuple) -> Spec | None:
        data = self.mapping(data, path, what="a cron job", keys=CRON_KEYS)
        if data is None:
            return None
        name = self.string(data, "name", path, required=True, max_length=200)
        agent = self.string(data, "agent", path, required=True, max_length=63)
        session_target = data.get("session_target", CronJob.SessionTarget.MAIN)
        if session_target not in CronJob.SessionTarget.values:
            self.error((*path, "session_target"), f"must be one of {', '.join(CronJob.SessionTarget.values)}")
        fields = {
            "name": name, "agent": agent, "session_target": session_target,
            "prompt": self.string(data, "prompt", path, required=True, max_length=100_000),
            "enabled": self.boolean(data, "enabled", path, default=True),
            "timeout_seconds": self.integer(data, "timeout_seconds", path, default=None, lo=1, hi=7 * 86400, nullable=True)
            or settings.BEAMCLAW_CRON["RUN_TIMEOUT_SECONDS"],
        }
        extra = {"anchored": True}
        fields["schedule"] = None
        if "schedule" not in data:
            self.error((*path, "schedule"), 'required, e.g. {"kind": "cron", "expr": "0 9 * * 1-5", "tz": "Europe/Berlin"}')
        else:
            fields["schedule"], extra["anchored"] = self.schedule(data["schedule"], (*path, "schedule"))
        fields["deliver"] = self.deliver(data.get("deliver"), (*path, "deliver"))
        return Spec("cron job", f"{tenant}/{agent}/{name}", path, self.reader.line(path), fields, extra)

    def schedule(self, value, path: tuple):
        # The operator's file, like the admin, is not bound by the API's minimum interval (docs/cron.md).
        early, late = datetime(1971, 1, 1, tzinfo=timezone.get_fixed_timezone(0)), timezone.now()
        try:
            parsed = schedule_parse(value, now=early, min_interval_seconds=1)
            if isinstance(parsed, At) and parsed != schedule_parse(value, now=early + timedelta(days=1)):
                self.error((*path, "at"), "give an ISO 8601 instant such as '2030-01-31T09:00:00Z': a delay would move "
                                          "the job on every apply")
                return None, False
        except ScheduleError as exc:
            self.error((*path, exc.field) if isinstance(value, dict) else path, exc.message)
            return None, False
        anchored = not isinstance(parsed, Every) or (isinstance(value, dict) and value.get("anchor") not in (None, ""))
        if isinstance(parsed, Every) and not anchored:
            parsed = Every(seconds=parsed.seconds, anchor=late.replace(microsecond=0))
        return parsed, anchored

    def deliver(self, value, path: tuple):
        if value in (None, "", {}):
            return None
        if isinstance(value, dict) and value.get("kind") == "channel":
            data = self.mapping(value, path, what="a channel target", keys=("kind", "channel", "to"))
            channel, to = data.get("channel"), data.get("to")
            if not isinstance(channel, str) or not channel:
                self.error((*path, "channel"), "must be the name of one of the tenant's channels")
                return None
            if isinstance(to, int) and not isinstance(to, bool):
                to = str(to)
            if not isinstance(to, str) or not to.strip() or len(to.strip()) > MAX_TO_LENGTH:
                self.error((*path, "to"), f"must say where on the channel (a Discord channel or user id), at most "
                                          f"{MAX_TO_LENGTH} characters")
                return None
            return {"kind": "channel", "channel": channel, "to": to.strip()}
        if isinstance(value, dict):
            if "secret" in value:
                self.no_clear_secret(value["secret"], (*path, "secret"))
            keeps = {key: item for key, item in value.items() if isinstance(item, _Keep)}
            headers = value.get("headers")
            header_keeps = {key: item for key, item in headers.items() if isinstance(item, _Keep)} if isinstance(headers, dict) else {}
            # The transport checks the shape with placeholders where a stored secret will stay.
            probe = {**value, **dict.fromkeys(keeps, "kept")}
            if header_keeps:
                probe["headers"] = {**headers, **dict.fromkeys(header_keeps, "kept")}
            try:
                parsed = deliver_parse(probe)
            except DeliveryTargetError as exc:
                self.error(path, str(exc))
                return None
            parsed.update(keeps)
            if header_keeps:
                parsed["headers"] = {**parsed["headers"], **header_keeps}
            return parsed
        try:
            return deliver_parse(value)
        except DeliveryTargetError as exc:
            self.error(path, str(exc))
            return None


def _binding_order(binding: dict) -> tuple:
    return (-binding["priority"], binding["guild_id"], binding["channel_id"], binding["peer_id"], binding["agent"])


def config_parse(*, text: str, filename: str = "beamclaw.yaml", environ=None) -> Desired:
    """The file's configuration, checked whole: its problems are in `errors` (the plan adds those only the
    database can tell, so one run reports both). Raises ConfigInvalid when the text is not YAML at all."""
    reader = _Reader(os.environ if environ is None else environ)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        document = reader.value(loader, node, ()) if node is not None else {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigInvalid([ConfigError("", mark.line + 1 if mark else None, f"not valid YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigInvalid([ConfigError("", None, f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    desired = _Validator(reader, document).run(filename)
    desired.errors = reader.errors
    return desired


# --- the database's state ----------------------------------------------------------------------------------------


def _clean_or_raw(clean: Callable, value):
    """A stored value as the file's cleaner would spell it, so equal settings compare equal; a stored value
    the cleaner refuses (set through the admin) is compared as it is, and differs."""
    try:
        return clean(value)
    except (ApiValidationError, DjangoValidationError, DomainError):
        return value


def _agent_state(agent: Agent) -> dict:
    state = {key: getattr(agent, key) for key in ("name", "provider", "model", "base_url", "api_key", "system_prompt", "max_tokens")}
    for key, clean in _AGENT_CLEANERS.items():
        stored = getattr(agent, key)
        # base_url's check resolves the host: the stored one was checked when it was set.
        state[key] = stored if key == "base_url" else _clean_or_raw(clean, stored)
    return state


def _channel_state(account: ChannelAccount, bindings: list[Binding]) -> dict:
    return {
        "kind": account.kind, "name": account.name, "agent": account.agent.slug, "token": account.secret,
        "enabled": account.enabled, "config": _clean_or_raw(CONFIG_PARSERS[account.kind], dict(account.config)),
        "bindings": sorted(map(_binding_state, bindings), key=_binding_order),
    }


def _binding_state(binding: Binding) -> dict:
    return {"guild_id": binding.guild_id, "channel_id": binding.channel_id, "peer_id": binding.peer_id,
            "priority": binding.priority, "agent": binding.agent.slug}


def _cron_state(job: CronJob, channel_names: dict[int, str]) -> dict:
    deliver = job.deliver
    if deliver and deliver.get("kind") == "channel":
        deliver = {**deliver, "channel": channel_names.get(deliver.get("channel"), deliver.get("channel"))}
    return {
        "name": job.name, "agent": job.agent.slug, "prompt": job.prompt, "session_target": job.session_target,
        "schedule": job.schedule, "deliver": deliver, "enabled": job.enabled, "timeout_seconds": job.timeout_seconds,
    }


@dataclass
class _Current:
    tenant: Tenant | None
    agents: dict[str, Agent]
    channels: dict[str, tuple[ChannelAccount, list[Binding]]]
    jobs: dict[tuple, CronJob]


def _current(slug: str) -> _Current:
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        return _Current(None, {}, {}, {})
    agents = {agent.slug: agent for agent in Agent.objects.filter(tenant=tenant)}
    accounts = ChannelAccount.objects.filter(tenant=tenant).select_related("agent")
    bindings: dict[int, list[Binding]] = {}
    for binding in Binding.objects.filter(account__tenant=tenant).select_related("agent"):
        bindings.setdefault(binding.account_id, []).append(binding)
    channels = {account.name: (account, bindings.get(account.pk, [])) for account in accounts}
    jobs = {(job.agent.slug, job.name): job for job in CronJob.objects.filter(tenant=tenant).select_related("agent", "tenant")}
    return _Current(tenant, agents, channels, jobs)


# --- the plan ------------------------------------------------------------------------------------------------------

SECRET_FIELDS = {"agent": {"api_key"}, "channel": {"token"}}


@dataclass
class Change:
    action: str  # create | update | delete
    kind: str
    label: str
    path: str
    line: int | None
    fields: dict[str, tuple] = field(default_factory=dict)  # name: (old, new), for updates
    notes: list[str] = field(default_factory=list)
    run: Callable[[], None] | None = None

    def render(self) -> str:
        sign = {"create": "+", "update": "~", "delete": "-"}[self.action]
        text = f"  {sign} {self.action} {self.kind} {self.label}"
        if self.fields:
            text += ": " + ", ".join(_field_change(self.kind, name, old, new) for name, (old, new) in self.fields.items())
        return "\n".join([text, *(f"      {note}" for note in self.notes)])


def _short(value) -> str | None:
    if isinstance(value, (bool, int)) or value is None:
        return json.dumps(value)
    if isinstance(value, str) and len(value) <= 60 and "\n" not in value:
        return json.dumps(value)
    return None


def _field_change(kind: str, name: str, old, new) -> str:
    if name in SECRET_FIELDS.get(kind, ()) or name == "deliver":
        return name
    old_text, new_text = _short(old), _short(new)
    return f"{name} {old_text} → {new_text}" if old_text and new_text else name


@dataclass
class Plan:
    changes: list[Change]
    notes: list[str]
    errors: list[ConfigError]

    def render(self) -> str:
        lines = [change.render() for change in self.changes]
        counts = Counter(change.action for change in self.changes)
        lines += [f"  = {note}" for note in self.notes]
        if self.changes:
            lines.append(f"{counts['create']} to create, {counts['update']} to update, {counts['delete']} to delete.")
        else:
            lines.append("No changes: the database matches the file.")
        return "\n".join(lines)


def _keep_secrets(desired, stored, path: tuple, *, kept: list[tuple], missing: list[tuple]):
    """`desired` with each _Keep replaced by what `stored` holds there. Records (path, variable) in `kept`,
    or in `missing` where nothing is stored to keep (a new object, a new header)."""
    if isinstance(desired, _Keep):
        (missing if stored is None else kept).append((path, desired.variable))
        return stored
    if isinstance(desired, dict):
        stored = stored if isinstance(stored, dict) else {}
        return {key: _keep_secrets(value, stored.get(key), (*path, key), kept=kept, missing=missing)
                for key, value in desired.items()}
    return desired


def _diff(desired: dict, current: dict) -> dict[str, tuple]:
    return {key: (current.get(key), value) for key, value in desired.items() if current.get(key) != value}


class _Planner:
    def __init__(self, desired: Desired, *, prune: bool, lock: bool):
        self.desired = desired
        self.prune = prune
        self.lock = lock
        self.changes: list[Change] = []
        self.deletes: list[Change] = []
        self.tenant_updates: list[Change] = []
        self.notes: list[str] = []
        self.errors: list[ConfigError] = []

    def fail(self, spec: Spec, message: str, *, at: tuple = ()) -> None:
        path = (*spec.path, *at)
        self.errors.append(ConfigError(_path_text(path), self.desired.lines.get(path, spec.line), message))

    def secrets(self, spec: Spec, desired: dict, stored: dict | None) -> dict:
        kept, missing = [], []
        resolved = _keep_secrets(desired, stored, spec.path, kept=kept, missing=missing)
        for path, variable in kept:
            self.notes.append(f"{spec.kind} {spec.label}: {_path_text(path[len(spec.path):])} kept as stored "
                              f"({variable} is not set)")
        for path, variable in missing:
            self.errors.append(ConfigError(
                _path_text(path), self.desired.lines.get(path, spec.line),
                f"the environment variable {variable} is not set, and there is no stored secret to keep; set it",
            ))
        return resolved

    def plan(self) -> Plan:
        for slug, spec in self.desired.tenants.items():
            if self.lock:
                # Two applies of one tenant take turns. Not the tenant row: the engine locks it after a
                # session, and pruning an agent locks its sessions after this.
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"beamclaw.config:{slug}"])
            self.tenant(slug, spec, _current(slug))
        # A tenant's own row is written last, after any session an agent's deletion takes (the engine's order).
        errors = sorted([*self.desired.errors, *self.errors], key=lambda error: (error.line or 0, error.path))
        return Plan(self.changes + self.deletes + self.tenant_updates, self.notes, errors)

    def tenant(self, slug: str, spec: TenantSpec, current: _Current) -> None:
        if current.tenant is None:
            self.changes.append(Change("create", "tenant", slug, _path_text(spec.path), spec.line,
                                       notes=["no API key is issued: issue keys in the admin (API keys) or with "
                                              f"`manage.py create_tenant {slug} --exists-ok --agent <agent>`"],
                                       run=lambda: _tenant_create(slug, spec.fields)))
        else:
            state = {key: getattr(current.tenant, key) for key in spec.fields}
            changed = _diff(spec.fields, state)
            if changed:
                self.tenant_updates.append(Change("update", "tenant", slug, _path_text(spec.path), spec.line, changed,
                                                  run=lambda: _tenant_update(slug, spec.fields)))
        agents = set(spec.agents) | (set() if self.prune else set(current.agents))
        channels = set(spec.channels) | (set() if self.prune else set(current.channels))
        for agent_slug, agent in spec.agents.items():
            self.agent(slug, agent_slug, agent, current.agents.get(agent_slug))
        for name, channel in spec.channels.items():
            self.channel(slug, channel, current.channels.get(name), agents)
        for key, job in spec.cron_jobs.items():
            self.cron_job(slug, job, current.jobs.get(key), agents, channels, current)
        if self.prune:
            self.prune_tenant(slug, spec, current)

    def agent(self, tenant: str, slug: str, spec: Spec, agent: Agent | None) -> None:
        state = _agent_state(agent) if agent is not None else None
        fields = self.secrets(spec, spec.fields, state)
        if agent is None:
            self.changes.append(Change("create", "agent", spec.label, _path_text(spec.path), spec.line,
                                       run=lambda: _agent_create(tenant, slug, fields)))
            return
        changed = _diff(fields, state)
        if changed:
            self.changes.append(Change("update", "agent", spec.label, _path_text(spec.path), spec.line, changed,
                                       run=lambda: _agent_update(tenant, slug, {key: fields[key] for key in changed})))

    def channel(self, tenant: str, spec: Spec, existing, agents: set[str]) -> None:
        for index, agent in spec.extra["binding_agents"]:
            if agent not in agents:
                self.fail(spec, f"no agent '{agent}' in tenant '{tenant}'" + self.pruned_hint(), at=("bindings", index, "agent"))
        if spec.fields["agent"] not in agents:
            self.fail(spec, f"no agent '{spec.fields['agent']}' in tenant '{tenant}'" + self.pruned_hint(), at=("agent",))
        state = _channel_state(*existing) if existing is not None else None
        fields = self.secrets(spec, spec.fields, state)
        name = spec.fields["name"]
        if existing is None:
            self.changes.append(Change("create", "channel", spec.label, _path_text(spec.path), spec.line,
                                       run=lambda: _channel_create(tenant, fields)))
            return
        if state["kind"] != fields["kind"]:
            self.fail(spec, f"a channel's kind cannot change ({state['kind']} → {fields['kind']}); give the new one "
                            "another name (and --prune to delete this one)", at=("kind",))
            return
        changed = _diff(fields, state)
        if changed:
            self.changes.append(Change("update", "channel", spec.label, _path_text(spec.path), spec.line, changed,
                                       run=lambda: _channel_update(tenant, name, fields, set(changed))))

    def cron_job(self, tenant: str, spec: Spec, job: CronJob | None, agents: set[str], channels: set[str],
                 current: _Current) -> None:
        fields = dict(spec.fields)
        if fields["agent"] not in agents:
            self.fail(spec, f"no agent '{fields['agent']}' in tenant '{tenant}'" + self.pruned_hint(), at=("agent",))
        deliver = fields["deliver"]
        if deliver and deliver["kind"] == "channel" and deliver["channel"] not in channels:
            self.fail(spec, f"no channel '{deliver['channel']}' in tenant '{tenant}'" + self.pruned_hint(),
                      at=("deliver", "channel"))
        if fields["schedule"] is None:
            return
        state = _cron_state(job, {account.pk: name for name, (account, _) in current.channels.items()}) if job else None
        schedule = fields["schedule"]
        if isinstance(schedule, Every) and not spec.extra["anchored"] and state and isinstance(state["schedule"], Every):
            # Without an anchor an existing job keeps its grid; a new one starts it now.
            fields["schedule"] = schedule = Every(seconds=schedule.seconds, anchor=state["schedule"].anchor)
        if state and isinstance(schedule, At) and state["schedule"] == schedule and not job.enabled and schedule.at <= timezone.now():
            # An `at` job that ran is done; it disabled itself, which the file need not say.
            fields["enabled"] = False
        if isinstance(schedule, At) and fields["enabled"] and schedule.at <= timezone.now() and (state is None or state["schedule"] != schedule or not job.enabled):
            self.fail(spec, f"'at' {schedule.as_dict()['at']} has passed; give a future instant", at=("schedule",))
        fields = self.secrets(spec, fields, state)
        if job is None:
            self.changes.append(Change("create", "cron job", spec.label, _path_text(spec.path), spec.line,
                                       run=lambda: _cron_create(tenant, fields)))
            return
        changed = _diff(fields, state)
        if changed:
            shown = {key: (old.as_dict(), new.as_dict()) if key == "schedule" else (old, new) for key, (old, new) in changed.items()}
            self.changes.append(Change("update", "cron job", spec.label, _path_text(spec.path), spec.line, shown,
                                       run=lambda: _cron_update(job.pk, tenant, {key: fields[key] for key in changed})))

    def pruned_hint(self) -> str:
        return " (with --prune, only what the file names counts)" if self.prune else ""

    def prune_tenant(self, slug: str, spec: TenantSpec, current: _Current) -> None:
        path = _path_text(spec.path)
        for key, job in current.jobs.items():
            if key not in spec.cron_jobs:
                self.deletes.append(Change("delete", "cron job", f"{slug}/{key[0]}/{key[1]}", path, spec.line,
                                           notes=["its run history goes with it"], run=lambda pk=job.pk: _cron_delete(pk)))
        for name, (account, _) in current.channels.items():
            if name not in spec.channels:
                self.deletes.append(Change("delete", "channel", f"{slug}/{name}", path, spec.line,
                                           notes=["its bindings and pairings go with it"],
                                           run=lambda pk=account.pk: ChannelAccount.objects.filter(pk=pk).delete()))
        for agent_slug, agent in current.agents.items():
            if agent_slug not in spec.agents:
                sessions = AgentSession.objects.filter(agent=agent).count()
                self.deletes.append(Change("delete", "agent", f"{slug}/{agent_slug}", path, spec.line,
                                           notes=[f"its {sessions} session(s) and their transcripts go with it"],
                                           run=lambda pk=agent.pk: Agent.objects.filter(pk=pk).delete()))


def config_plan(*, desired: Desired, prune: bool = False) -> Plan:
    """What applying `desired` would change, and every error that would stop it (for --dry-run)."""
    return _Planner(desired, prune=prune, lock=False).plan()


def config_apply(*, desired: Desired, prune: bool = False) -> Plan:
    """Apply `desired` in one transaction: the plan is made again under it (two applies of one tenant take
    turns) and run whole. Raises ConfigInvalid, having changed nothing, when the
    plan or a service refuses something."""
    with transaction.atomic():
        plan = _Planner(desired, prune=prune, lock=True).plan()
        if plan.errors:
            raise ConfigInvalid(plan.errors)
        for change in plan.changes:
            try:
                change.run()
            except (DomainError, DjangoValidationError, ApiValidationError) as exc:
                transaction.set_rollback(True)
                raise ConfigInvalid([ConfigError(change.path, change.line, f"{change.action} {change.kind} "
                                                                           f"{change.label}: {_messages(exc)}")]) from None
    return plan


# --- the writes ------------------------------------------------------------------------------------------------


def _tenant_create(slug: str, fields: dict) -> None:
    tenant = Tenant(slug=slug, **fields)
    tenant.full_clean()
    tenant.save()
    if tenant.status == Tenant.Status.ACTIVE:
        transaction.on_commit(lambda: announce_queue(slug))


def _tenant_update(slug: str, fields: dict) -> None:
    tenant = Tenant.objects.get(slug=slug)
    activated = tenant.status != Tenant.Status.ACTIVE and fields["status"] == Tenant.Status.ACTIVE
    for key, value in fields.items():
        setattr(tenant, key, value)
    tenant.full_clean()
    tenant.save(update_fields=list(fields))
    if activated:
        transaction.on_commit(lambda: announce_queue(slug))


def _agent_create(tenant: str, slug: str, fields: dict) -> None:
    agent_create(tenant=Tenant.objects.get(slug=tenant), slug=slug, **fields)


def _agent_update(tenant: str, slug: str, changes: dict) -> None:
    agent = Agent.objects.get(tenant__slug=tenant, slug=slug)
    for key, value in changes.items():
        setattr(agent, key, value)
    agent.full_clean(validate_unique=False)
    agent.save(update_fields=[*changes, "updated_at"])


def _channel_create(tenant: str, fields: dict) -> None:
    account = channel_account_create(
        tenant=Tenant.objects.get(slug=tenant), kind=fields["kind"], name=fields["name"], agent=fields["agent"],
        secret=fields["token"], config=fields["config"], enabled=fields["enabled"],
    )
    for binding in fields["bindings"]:
        binding_create(account=account, **binding)


def _channel_update(tenant: str, name: str, fields: dict, changed: set[str]) -> None:
    account = ChannelAccount.objects.select_related("tenant").get(tenant__slug=tenant, name=name)
    changes = {key: fields[key] for key in ("agent", "enabled") if key in changed}
    if "token" in changed:
        changes["secret"] = fields["token"]
    if "config" in changed:
        # The service merges a config into the stored one; a key the file left out goes back to its default.
        changes["config"] = {**dict.fromkeys(account.config), **fields["config"]}
    if changes:
        account = channel_account_update(account=account, **changes)
    if "bindings" in changed:
        wanted = Counter(_binding_key(binding) for binding in fields["bindings"])
        for binding in Binding.objects.filter(account=account).select_related("agent"):
            key = _binding_key(_binding_state(binding))
            if wanted[key]:
                wanted[key] -= 1
            else:
                binding_delete(binding=binding)
        for binding in fields["bindings"]:
            key = _binding_key(binding)
            if wanted[key]:
                wanted[key] -= 1
                binding_create(account=account, **binding)


def _binding_key(binding: dict) -> tuple:
    return tuple(binding[key] for key in ("guild_id", "channel_id", "peer_id", "priority", "agent"))


def _deliver_stored(tenant: Tenant, deliver: dict | None) -> dict | None:
    if not deliver or deliver["kind"] != "channel":
        return deliver
    account = ChannelAccount.objects.get(tenant=tenant, name=deliver["channel"])
    return deliver_parse({**deliver, "channel": account.pk}, tenant=tenant)


def _cron_create(tenant: str, fields: dict) -> None:
    tenant_obj = Tenant.objects.get(slug=tenant)
    cron_job_create(
        tenant=tenant_obj, agent=Agent.objects.get(tenant=tenant_obj, slug=fields["agent"]), name=fields["name"],
        prompt=fields["prompt"], schedule=fields["schedule"], session_target=fields["session_target"],
        deliver=_deliver_stored(tenant_obj, fields["deliver"]), enabled=fields["enabled"],
        timeout_seconds=fields["timeout_seconds"],
    )


def _cron_update(job_id: int, tenant: str, changes: dict) -> None:
    job = CronJob.objects.select_related("tenant").get(pk=job_id)
    if "agent" in changes:
        changes["agent"] = Agent.objects.get(tenant=job.tenant, slug=changes["agent"])
    if "deliver" in changes:
        changes["deliver"] = _deliver_stored(job.tenant, changes["deliver"])
    cron_job_update(job=job, changes=changes)


def _cron_delete(job_id: int) -> None:
    job = CronJob.objects.filter(pk=job_id).first()
    if job is not None:
        cron_job_delete(job=job)


# --- export ------------------------------------------------------------------------------------------------------


def _variable(*parts: str) -> str:
    """The name of the environment variable export refers a secret to: BEAMCLAW_SECRET_<TENANT>_..."""
    return "BEAMCLAW_SECRET_" + "_".join(re.sub(r"[^A-Za-z0-9]+", "_", part).strip("_").upper() for part in parts)


def _reference(*parts: str) -> str:
    return f"${{{_variable(*parts)}}}"


def _without_defaults(values: dict, defaults: dict) -> dict:
    return {key: value for key, value in values.items() if key not in defaults or defaults[key] != value}


def _escaped(value):
    if isinstance(value, str):
        return _escape(value)
    if isinstance(value, dict):
        return {key: _escaped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    return value


def _export_tenant(tenant: Tenant) -> dict:
    current = _current(tenant.slug)
    data = {"name": tenant.name, "status": tenant.status, "max_concurrent_runs": tenant.max_concurrent_runs,
            "daily_token_budget": tenant.daily_token_budget}
    data = _escaped(_without_defaults(data, {"name": tenant.slug, "status": Tenant.Status.ACTIVE,
                                             "max_concurrent_runs": 10, "daily_token_budget": None}))
    agents = {}
    for slug, agent in sorted(current.agents.items()):
        state = _agent_state(agent)
        shown = _escaped(_without_defaults(state, _agent_defaults()))
        if state["api_key"]:
            shown["api_key"] = _reference(tenant.slug, "agent", slug, "api_key")
        agents[slug] = {"model": shown.pop("model"), **shown}
    if agents:
        data["agents"] = agents
    channels = {}
    for name, (account, bindings) in sorted(current.channels.items()):
        state = _channel_state(account, bindings)
        entry = {"kind": state["kind"], "agent": state["agent"], "token": _reference(tenant.slug, "channel", name, "token")}
        if not state["enabled"]:
            entry["enabled"] = False
        defaults = _clean_or_raw(CONFIG_PARSERS[account.kind], {})
        entry.update(_escaped(_without_defaults(state["config"], defaults)))
        if state["bindings"]:
            entry["bindings"] = [
                {"match": {key: binding[key] for key in ("guild_id", "channel_id", "peer_id") if binding[key]},
                 "agent": binding["agent"], **({"priority": binding["priority"]} if binding["priority"] else {})}
                for binding in state["bindings"]
            ]
        channels[name] = entry
    if channels:
        data["channels"] = channels
    jobs = []
    names = {account.pk: name for name, (account, _) in current.channels.items()}
    for (agent_slug, name), job in sorted(current.jobs.items()):
        state = _cron_state(job, names)
        entry = {"name": _escape(name), "agent": agent_slug, "prompt": _escape(state["prompt"]),
                 "schedule": state["schedule"].as_dict()}
        if state["session_target"] != CronJob.SessionTarget.MAIN:
            entry["session_target"] = state["session_target"]
        if state["deliver"]:
            entry["deliver"] = _export_deliver(state["deliver"], tenant.slug, agent_slug, name)
        if not state["enabled"]:
            entry["enabled"] = False
        if state["timeout_seconds"] != settings.BEAMCLAW_CRON["RUN_TIMEOUT_SECONDS"]:
            entry["timeout_seconds"] = state["timeout_seconds"]
        jobs.append(entry)
    if jobs:
        data["cron_jobs"] = jobs
    return data


def _export_deliver(deliver: dict, tenant: str, agent: str, name: str) -> dict:
    if deliver["kind"] == "channel":
        return _escaped({"kind": "channel", "channel": deliver["channel"], "to": deliver["to"]})
    public = deliver_public(deliver)
    shown = _escaped({"kind": "webhook", **{key: value for key, value in deliver.items() if key not in ("kind", "secret", "headers")}})
    if deliver.get("secret"):
        shown["secret"] = _reference(tenant, "cron", agent, name, "secret")
    if deliver.get("headers"):
        shown["headers"] = {
            header: _reference(tenant, "cron", agent, name, "header", header) if public["headers"][header] != value else _escape(value)
            for header, value in deliver["headers"].items()
        }
    return shown


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str):
    # Prompts read best as blocks; PyYAML falls back to quoting where a block cannot hold the text exactly.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _scalars_only(values) -> bool:
    return all(isinstance(value, (str, int, float, bool)) or value is None for value in values)


def _represent_list(dumper: yaml.SafeDumper, value: list):
    # [web_fetch, cron] rather than one line per item, where it fits on a line.
    flow = bool(value) and _scalars_only(value) and len(json.dumps(value)) <= 80 and not any("\n" in str(v) for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


def _represent_dict(dumper: yaml.SafeDumper, value: dict):
    flow = bool(value) and _scalars_only(value.values()) and len(json.dumps(value)) <= 80 and not any(
        "\n" in str(v) for v in value.values()
    )
    return dumper.represent_mapping("tag:yaml.org,2002:map", value, flow_style=flow)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)


def config_export(*, tenant_slugs: list[str] | None = None) -> str:
    """The tenants' configuration (all tenants when `tenant_slugs` is None) as beamclaw.yaml text; secrets
    as ${BEAMCLAW_SECRET_...} references. Raises ConfigInvalid naming a tenant that does not exist."""
    tenants = Tenant.objects.order_by("slug")
    if tenant_slugs is not None:
        tenants = tenants.filter(slug__in=tenant_slugs)
        missing = sorted(set(tenant_slugs) - set(tenants.values_list("slug", flat=True)))
        if missing:
            raise ConfigInvalid([ConfigError("", None, f"no tenant '{slug}'") for slug in missing])
    document = {"version": FORMAT_VERSION, "tenants": {tenant.slug: _export_tenant(tenant) for tenant in tenants}}
    header = ("# BeamClaw configuration (docs/config.md). Secrets are ${BEAMCLAW_SECRET_...} references: set them\n"
              "# to change a secret; unset, `apply_config` keeps the stored one. API keys are not part of it.\n")
    return header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def config_digest(text: bytes) -> str:
    """What --watch compares to tell that the file changed."""
    return hashlib.sha256(text).hexdigest()
