"""Channel accounts, their bindings and DM pairings: what every edge (REST, admin, `manage.py pairing`, the
Discord bot, the webhook endpoint) does with them goes through here.

A Discord account's `config` (all optional, defaults shown):

    {"dm_policy": "pairing",            # pairing | allowlist | open | disabled
     "allow_from": [],                  # user ids whose DMs always reach the agent
     "guilds": {},                      # {"<guild id>": {"require_mention": true, "channels": [ids]?}}
     "approvers": [],                   # user ids shown tool approvals as buttons (default: allow_from)
     "queue_mode": "collect",           # how messages queue behind a reply in a conversation
     "stream": false}                   # preview the reply as it is written (one message, edited ≤ 1/s)

`collect` is the default queue mode: in a busy channel, messages that arrive while the agent answers are
answered together in one reply rather than one reply each. A webhook account's config is
`{"callback_url": "https://…", "queue_mode": "followup"}`; its secret signs both directions.
"""

import re
import secrets
import string
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from beamclaw_project.errors import Conflict, InvalidInput, NotFound
from channels_app.models import Binding, ChannelAccount, Pairing
from sessions.models import AgentSession
from tenants.models import Agent, Tenant

DM_POLICIES = ("pairing", "allowlist", "open", "disabled")
# Published (Redis pub/sub) when an account or binding changes: `run_discord` reloads at once.
ACCOUNTS_CHANGED = "bc:channels:accounts-changed"
PAIRING_TTL = timedelta(hours=1)
PAIRING_ALPHABET = string.ascii_uppercase + string.digits
PAIRING_CODE = re.compile(r"^[A-Z0-9]{8}$")
# Discord ids are snowflakes: decimal, at most 20 digits.
_SNOWFLAKE = re.compile(r"^[0-9]{1,20}$")
_NAME = re.compile(r"^[\w .@+-]{1,100}$")
_PLATFORM_ID = re.compile(r"[\w.@+-]{1,64}")
MAX_ALLOW_FROM = 1000
MAX_GUILDS = 200
MAX_CHANNELS_PER_GUILD = 500
DEFAULT_QUEUE_MODE = {ChannelAccount.Kind.DISCORD: AgentSession.QueueMode.COLLECT,
                      ChannelAccount.Kind.WEBHOOK: AgentSession.QueueMode.FOLLOWUP}


class ChannelAccountInvalid(InvalidInput):
    pass


class PairingNotFound(NotFound):
    pass


def _snowflakes(value, *, field: str, limit: int) -> list[str]:
    if not isinstance(value, list) or len(value) > limit:
        raise ChannelAccountInvalid(f"'{field}' must be a list of at most {limit} Discord ids.", field=field)
    ids = [str(v) for v in value]
    bad = [v for v in ids if not _SNOWFLAKE.match(v)]
    if bad:
        raise ChannelAccountInvalid(f"{bad[0]!r} is not a Discord id (digits only).", field=field)
    return list(dict.fromkeys(ids))


def _queue_mode(value, kind: str) -> str:
    if value is None:
        return DEFAULT_QUEUE_MODE[kind]
    if value not in AgentSession.QueueMode.values:
        raise ChannelAccountInvalid(
            f"'queue_mode' must be one of {', '.join(AgentSession.QueueMode.values)}.", field="queue_mode"
        )
    return value


def _flag(value, *, field: str) -> bool:
    if not isinstance(value, bool):
        raise ChannelAccountInvalid(f"'{field}' must be true or false.", field=field)
    return value


def discord_config_parse(data: dict) -> dict:
    unknown = sorted(set(data) - {"dm_policy", "allow_from", "guilds", "approvers", "queue_mode", "stream"})
    if unknown:
        raise ChannelAccountInvalid(f"Unknown Discord setting(s): {', '.join(unknown)}.", field=unknown[0])
    dm_policy = data.get("dm_policy") or "pairing"
    if dm_policy not in DM_POLICIES:
        raise ChannelAccountInvalid(f"'dm_policy' must be one of {', '.join(DM_POLICIES)}.", field="dm_policy")
    guilds_in = data.get("guilds") or {}
    if not isinstance(guilds_in, dict) or len(guilds_in) > MAX_GUILDS:
        raise ChannelAccountInvalid(
            f'\'guilds\' must be an object of at most {MAX_GUILDS} guilds: {{"<guild id>": {{"require_mention": true, '
            '"channels": ["<channel id>"]}}.', field="guilds",
        )
    guilds = {}
    for guild_id, settings in guilds_in.items():
        if not _SNOWFLAKE.match(str(guild_id)):
            raise ChannelAccountInvalid(f"{guild_id!r} is not a Discord guild id (digits only).", field="guilds")
        settings = settings or {}
        if not isinstance(settings, dict) or set(settings) - {"require_mention", "channels"}:
            raise ChannelAccountInvalid(
                f"'guilds.{guild_id}' takes only 'require_mention' (true/false) and 'channels' (a list of ids).",
                field="guilds",
            )
        require_mention = settings.get("require_mention", True)
        if not isinstance(require_mention, bool):
            raise ChannelAccountInvalid(f"'guilds.{guild_id}.require_mention' must be true or false.", field="guilds")
        guild = {"require_mention": require_mention}
        if settings.get("channels") is not None:
            guild["channels"] = _snowflakes(settings["channels"], field="guilds", limit=MAX_CHANNELS_PER_GUILD)
        guilds[str(guild_id)] = guild
    return {
        "dm_policy": dm_policy,
        "allow_from": _snowflakes(data.get("allow_from") or [], field="allow_from", limit=MAX_ALLOW_FROM),
        "guilds": guilds,
        "approvers": _snowflakes(data.get("approvers") or [], field="approvers", limit=MAX_ALLOW_FROM),
        "queue_mode": _queue_mode(data.get("queue_mode"), ChannelAccount.Kind.DISCORD),
        "stream": _flag(False if data.get("stream") is None else data["stream"], field="stream"),
    }


def webhook_config_parse(data: dict) -> dict:
    from channels_app.transport import TargetInvalid
    from channels_app.transports.webhook import WebhookTransport

    unknown = sorted(set(data) - {"callback_url", "queue_mode"})
    if unknown:
        raise ChannelAccountInvalid(f"Unknown webhook setting(s): {', '.join(unknown)}.", field=unknown[0])
    config = {"queue_mode": _queue_mode(data.get("queue_mode"), ChannelAccount.Kind.WEBHOOK)}
    if data.get("callback_url"):
        try:
            config["callback_url"] = WebhookTransport().parse_target({"url": data["callback_url"]})["url"]
        except TargetInvalid as exc:
            raise ChannelAccountInvalid(exc.message, field="callback_url") from None
    return config


CONFIG_PARSERS = {ChannelAccount.Kind.DISCORD: discord_config_parse, ChannelAccount.Kind.WEBHOOK: webhook_config_parse}


def _secret_check(kind: str, secret) -> str:
    if not isinstance(secret, str) or not secret.strip() or len(secret) > 512 or any(c.isspace() for c in secret.strip()):
        what = "the bot token from Discord's developer portal" if kind == "discord" else "a signing secret"
        raise ChannelAccountInvalid(f"'token' must be {what} (one word, at most 512 characters).", field="token")
    return secret.strip()


def channel_account_fields_parse(*, kind: str, name=None, secret=None, config=None) -> dict:
    """The given fields as channel_account_create/update would store them (config as a whole, not merged),
    or the ChannelAccountInvalid they would raise; for edges that check a form before saving (the admin),
    so that bad input is a form error rather than a failed save."""
    parsed = {}
    if name is not None:
        parsed["name"] = _name_check(name)
    if secret is not None:
        parsed["secret"] = _secret_check(kind, secret)
    if config is not None:
        parsed["config"] = CONFIG_PARSERS[kind](config)
    return parsed


def _agent_of(tenant: Tenant, agent: Agent | str) -> Agent:
    if isinstance(agent, Agent):
        if agent.tenant_id != tenant.pk:
            raise ChannelAccountInvalid(f"Unknown agent '{agent.slug}'.", field="agent")
        return agent
    found = Agent.objects.filter(tenant=tenant, slug=agent).first()
    if found is None:
        raise ChannelAccountInvalid(f"Unknown agent '{agent}'.", field="agent")
    return found


def _name_check(name) -> str:
    if not isinstance(name, str) or not _NAME.match(name.strip()):
        raise ChannelAccountInvalid("'name' must be 1 to 100 letters, digits, spaces or . @ + - _.", field="name")
    return name.strip()


def _status_initial(kind: str, enabled: bool) -> str:
    """A Discord account is `new` until its bot reports; a webhook endpoint takes messages once it exists."""
    if not enabled:
        return ChannelAccount.Status.DISABLED
    return ChannelAccount.Status.CONNECTED if kind == ChannelAccount.Kind.WEBHOOK else ChannelAccount.Status.NEW


def channel_account_create(
    *, tenant: Tenant, kind: str, name: str, agent: Agent | str, secret: str | None = None,
    config: dict | None = None, enabled: bool = True,
) -> ChannelAccount:
    """A new account. A webhook account without a secret gets a generated one (shown once by the API)."""
    if kind not in CONFIG_PARSERS:
        raise ChannelAccountInvalid(f"'kind' must be one of {', '.join(CONFIG_PARSERS)}.", field="kind")
    if kind == ChannelAccount.Kind.WEBHOOK and not secret:
        secret = secrets.token_urlsafe(32)
    account = ChannelAccount(
        tenant=tenant, kind=kind, name=_name_check(name), agent=_agent_of(tenant, agent),
        secret=_secret_check(kind, secret), config=CONFIG_PARSERS[kind](config or {}), enabled=enabled,
        status=_status_initial(kind, enabled),
    )
    try:
        with transaction.atomic():
            account.save()
    except IntegrityError:
        raise Conflict(f"A channel named '{account.name}' exists already.", field="name") from None
    return account


def channel_account_update(*, account: ChannelAccount, **changes) -> ChannelAccount:
    """Change name, agent, secret, enabled or config (a partial config merges into the current one)."""
    unknown = set(changes) - {"name", "agent", "secret", "config", "enabled"}
    if unknown:
        raise ChannelAccountInvalid(f"Cannot change {', '.join(sorted(unknown))}.", field=sorted(unknown)[0])
    restart = False
    if "name" in changes:
        account.name = _name_check(changes["name"])
    if "agent" in changes:
        account.agent = _agent_of(account.tenant, changes["agent"])
    if changes.get("secret") is not None:
        account.secret, restart = _secret_check(account.kind, changes["secret"]), True
    if "config" in changes:
        account.config, restart = CONFIG_PARSERS[account.kind]({**account.config, **(changes["config"] or {})}), True
    if "enabled" in changes and changes["enabled"] != account.enabled:
        account.enabled, restart = bool(changes["enabled"]), True
        account.status = _status_initial(account.kind, account.enabled)
        account.last_error = ""
    if restart:
        account.revision = F("revision") + 1
        if account.enabled:
            account.status, account.last_error = _status_initial(account.kind, True), ""
    try:
        with transaction.atomic():
            account.save()
    except IntegrityError:
        raise Conflict(f"A channel named '{account.name}' exists already.", field="name") from None
    account.refresh_from_db()
    return account


def channel_account_report(*, account_id: int, revision: int, status: str, error: str = "") -> None:
    """The bot process's word on an account it runs: ignored when the account changed since (a newer
    revision is being started, and its own report follows)."""
    ChannelAccount.objects.filter(pk=account_id, revision=revision, enabled=True).exclude(
        status=status, last_error=error
    ).update(status=status, last_error=error[:2000], updated_at=timezone.now())


def binding_match_parse(*, guild_id="", channel_id="", peer_id="", priority=0) -> dict:
    """A binding's match and priority, checked: what binding_create and binding_update store, and what an
    edge that validates before saving (the admin's inline form) checks."""
    ids = {"guild_id": guild_id or "", "channel_id": channel_id or "", "peer_id": peer_id or ""}
    for field, value in ids.items():
        if value and not _PLATFORM_ID.fullmatch(str(value)):
            raise ChannelAccountInvalid(f"'{field}' must be a platform id (at most 64 plain characters).", field=field)
    if not any(ids.values()):
        raise ChannelAccountInvalid(
            "A binding matches a guild_id, channel_id or peer_id; the account's own agent answers everything else.",
            field="match",
        )
    if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) > 1_000_000:
        raise ChannelAccountInvalid("'priority' must be an integer (higher wins among equally specific bindings).", field="priority")
    return {**{k: str(v) for k, v in ids.items()}, "priority": priority}


def binding_create(*, account: ChannelAccount, agent: Agent | str, guild_id: str = "", channel_id: str = "",
                   peer_id: str = "", priority: int = 0) -> Binding:
    fields = binding_match_parse(guild_id=guild_id, channel_id=channel_id, peer_id=peer_id, priority=priority)
    return Binding.objects.create(account=account, agent=_agent_of(account.tenant, agent), **fields)


def binding_update(*, binding: Binding, **changes) -> Binding:
    """Change a binding's agent, priority or match. Changes naming any id replace the match as a whole (the
    ids not given are cleared), so a binding never keeps a stale part of its old match."""
    unknown = set(changes) - {"agent", "guild_id", "channel_id", "peer_id", "priority"}
    if unknown:
        raise ChannelAccountInvalid(f"Cannot change {', '.join(sorted(unknown))}.", field=sorted(unknown)[0])
    match_keys = {"guild_id", "channel_id", "peer_id"}
    current = {"priority": binding.priority} if match_keys & set(changes) else {**binding.match, "priority": binding.priority}
    fields = binding_match_parse(**{**current, **{k: v for k, v in changes.items() if k != "agent"}})
    if "agent" in changes:
        binding.agent = _agent_of(binding.account.tenant, changes["agent"])
    for field, value in fields.items():
        setattr(binding, field, value)
    binding.save()
    return binding


def binding_delete(*, binding: Binding) -> None:
    # The bot reloads an account's bindings with its settings (channels_app/discord/bot.py), so nothing
    # else needs telling.
    binding.delete()


def route_agent(*, account: ChannelAccount, bindings: list[Binding], guild_id: str = "", channel_id: str = "",
                peer_id: str = "") -> int:
    """The id of the agent that answers here: the most specific matching binding (peer > channel > guild),
    then the highest priority; else the account's agent. `bindings` is the account's, loaded once by the
    caller (the bot keeps them with the account)."""
    best = None
    here = {"guild_id": guild_id, "channel_id": channel_id, "peer_id": peer_id}
    for binding in bindings:
        if any(here[k] != v for k, v in binding.match.items()):
            continue
        rank = (bool(binding.peer_id), bool(binding.channel_id), bool(binding.guild_id), binding.priority, -binding.pk)
        if best is None or rank > best[0]:
            best = (rank, binding)
    return best[1].agent_id if best else account.agent_id


def dm_allowed(*, account: ChannelAccount, sender_id: str) -> bool:
    """Whether a DM from this sender reaches the agent now (pairing: once an operator approved it)."""
    policy = account.config.get("dm_policy", "pairing")
    if policy == "open":
        return True
    if policy == "disabled":
        return False
    if sender_id in account.config.get("allow_from", []):
        return True
    return policy == "pairing" and Pairing.objects.filter(
        account=account, sender_id=sender_id, status=Pairing.Status.APPROVED
    ).exists()


def _new_code() -> str:
    return "".join(secrets.choice(PAIRING_ALPHABET) for _ in range(8))


def pairing_request(*, account: ChannelAccount, sender_id: str, sender_name: str = "") -> Pairing | None:
    """A code for an unknown DM sender, or None when the sender already holds a valid one (the sender is
    told a code once per hour, not on every message)."""
    now = timezone.now()
    for _ in range(5):
        try:
            with transaction.atomic():
                pairing = Pairing.objects.select_for_update().filter(account=account, sender_id=sender_id).first()
                if pairing is not None and (pairing.status == Pairing.Status.APPROVED or pairing.expires_at > now):
                    return None
                pairing = pairing or Pairing(account=account, sender_id=sender_id)
                pairing.code, pairing.expires_at, pairing.sender_name = _new_code(), now + PAIRING_TTL, sender_name[:200]
                pairing.save()
                return pairing
        except IntegrityError:
            # This sender's row made by another process meanwhile (the next look finds it), or a code that
            # is taken (one in 36^8): look again.
            continue
    raise RuntimeError("could not issue a unique pairing code")


def pairings_pending(*, tenant: Tenant | None = None, account: ChannelAccount | None = None):
    queryset = Pairing.objects.select_related("account", "account__tenant").filter(
        status=Pairing.Status.PENDING, expires_at__gt=timezone.now()
    )
    if tenant is not None:
        queryset = queryset.filter(account__tenant=tenant)
    if account is not None:
        queryset = queryset.filter(account=account)
    return queryset.order_by("created_at")


def pairing_approve(*, code: str, tenant: Tenant | None = None, account: ChannelAccount | None = None) -> Pairing:
    """Approve a pending, unexpired code (within the tenant or account when given: another tenant's code
    is not found)."""
    code = (code or "").strip().upper()
    if not PAIRING_CODE.match(code):
        raise InvalidInput("A pairing code is 8 letters and digits, as the bot sent it.", field="code")
    with transaction.atomic():
        pairing = pairings_pending(tenant=tenant, account=account).select_for_update(of=("self",)).filter(code=code).first()
        if pairing is None:
            raise PairingNotFound(
                f"No pending pairing with code {code}: it may have expired (codes last an hour) or been approved; "
                "the sender gets a new code by writing again.", field="code",
            )
        pairing.status, pairing.approved_at = Pairing.Status.APPROVED, timezone.now()
        pairing.save(update_fields=["status", "approved_at"])
    return pairing
