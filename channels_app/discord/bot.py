"""`run_discord`: every enabled Discord account of every tenant, hosted in one asyncio process.

One discord.py `Client` per account. The supervisor reloads the accounts when a change is announced
(channels_app/receivers.py) and every DISCORD_RELOAD_SECONDS: a new or re-enabled account is started, a disabled or deleted one stopped, a new
token restarts its client, and other changes (DM policy, guilds, bindings, approvers) apply to the
running client at once. A token Discord refuses marks that account `status=error` with the reason in
`last_error`; it is tried again only when the account changes. Every other account goes on.

Inbound: a message passes the gate (channels_app/discord/gate.py), the DM policy (pairing codes,
allowlist) and the routing by bindings, then becomes a run through `platform_message_receive`, whose
idempotency on the message id makes a redelivery after a gateway resume start nothing. The reply is the
worker's business (ChannelReply → channels_app/transports/discord.py); this process shows "typing…"
while the run works and puts the run's tool approvals before the account's approvers as a DM with
Approve / Deny buttons, decided through the same service as the REST API.

Gateway drops are discord.py's: it reconnects with backoff and resumes the session, and Discord replays
what was missed.
"""

import asyncio
import json
import logging
import signal
from dataclasses import dataclass, field

import discord
import yarl
from discord.gateway import DiscordWebSocket
from django.conf import settings

from beamclaw_project.asyncdb import db_call
from beamclaw_project.errors import DomainError
from beamclaw_project.infra.redis import async_redis
from channels_app import accounts
from channels_app.discord.gate import Inbound, gate
from channels_app.inbound import PlatformMessage, platform_message_receive
from channels_app.models import Binding, ChannelAccount
from sessions.events import TERMINAL_EVENTS, TEXT_DELTA
from sessions.run_stream import follow_run
from tenants.models import Agent, Tenant
from tools.approvals import APPROVAL_REQUESTED
from tools.models import Approval
from tools.services import ApprovalNotPending, approval_resolve

logger = logging.getLogger(__name__)

PAIRING_REPLY = (
    "Hi! I don't know you yet. To talk to me, ask my operator to approve this pairing code: **{code}** "
    "(valid for one hour)."
)
# A login that failed for another reason than the token (Discord unreachable) is tried again after this.
RETRY_SECONDS = 30.0
TYPING_RENEW_SECONDS = 8.0
STREAM_EDIT_SECONDS = 1.0
# An approval prompt's input, as JSON, fits in one Discord message with room to spare.
PROMPT_INPUT_LIMIT = 1500
DEADLINE_LINE = "Unanswered, it is denied at "


def discord_endpoints_configure() -> None:
    """Point discord.py at DISCORD_API_BASE_URL and DISCORD_GATEWAY_URL (docs/channels.md)."""
    discord.http.Route.BASE = settings.DISCORD_API_BASE_URL
    discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False  # no voice here: the warnings are noise
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.DISCORD_GATEWAY_URL)


@dataclass
class AccountView:
    """What a client needs of its account, loaded by the supervisor (no ORM calls on the event loop)."""

    account: ChannelAccount
    bindings: list[Binding]
    agents: dict[int, Agent]

    @property
    def approvers(self) -> list[str]:
        return self.account.config.get("approvers") or self.account.config.get("allow_from") or []


@db_call
def _load_accounts() -> list[AccountView]:
    found = list(
        ChannelAccount.objects.select_related("tenant", "agent")
        .filter(kind=ChannelAccount.Kind.DISCORD, enabled=True, tenant__status=Tenant.Status.ACTIVE)
        .prefetch_related("bindings")
    )
    agent_ids = {a.agent_id for a in found} | {b.agent_id for a in found for b in a.bindings.all()}
    agents = {agent.pk: agent for agent in Agent.objects.select_related("tenant").filter(pk__in=agent_ids)}
    return [
        AccountView(account=a, bindings=list(a.bindings.all()),
                    agents={pk: agents[pk] for pk in {a.agent_id, *(b.agent_id for b in a.bindings.all())}})
        for a in found
    ]


@db_call
def _report(view: AccountView, status: str, error: str = "") -> None:
    accounts.channel_account_report(account_id=view.account.pk, revision=view.account.revision, status=status, error=error)


@db_call
def _dm_allowed(account: ChannelAccount, sender_id: str) -> bool:
    return accounts.dm_allowed(account=account, sender_id=sender_id)


@db_call
def _pairing_request(account: ChannelAccount, sender_id: str, sender_name: str):
    return accounts.pairing_request(account=account, sender_id=sender_id, sender_name=sender_name)


@db_call
def _receive(message: PlatformMessage):
    return platform_message_receive(message=message)


@db_call
def _approval_decide(account: ChannelAccount, approval_id: str, decision: str, user) -> Approval:
    return approval_resolve(approval_id=approval_id, tenant=account.tenant, decision=decision,
                            decided_by=f"discord:{user.id} ({user.name})")


class ApprovalButton(discord.ui.DynamicItem[discord.ui.Button], template=r"bc:approval:(?P<id>[0-9a-f-]{36}):(?P<decision>allow|deny)"):
    """Approve / Deny on an approval prompt. Dynamic (the custom id carries the approval), so buttons of
    prompts sent before a restart still work."""

    def __init__(self, approval_id: str, decision: str):
        super().__init__(discord.ui.Button(
            label="Approve" if decision == "allow" else "Deny",
            style=discord.ButtonStyle.success if decision == "allow" else discord.ButtonStyle.danger,
            custom_id=f"bc:approval:{approval_id}:{decision}",
        ))
        self.approval_id, self.decision = approval_id, decision

    @classmethod
    async def from_custom_id(cls, interaction, item, match, /):
        return cls(match["id"], match["decision"])

    async def callback(self, interaction: discord.Interaction) -> None:
        client: AccountClient = interaction.client
        if str(interaction.user.id) not in client.view.approvers:
            await interaction.response.send_message("Only this bot's approvers can decide tool calls.", ephemeral=True)
            return
        try:
            approval = await _approval_decide(client.view.account, self.approval_id, self.decision, interaction.user)
            outcome = f"{'Approved' if approval.status == Approval.Status.ALLOWED else 'Denied'} by {interaction.user.mention}."
        except ApprovalNotPending as exc:
            outcome = f"Already decided: {exc.approval.status}."
        except Approval.DoesNotExist:
            outcome = "This approval no longer exists."
        prompt = interaction.message.content.split(f"\n{DEADLINE_LINE}")[0]
        await interaction.response.edit_message(content=f"{prompt}\n{outcome}", view=None)


def approval_prompt(payload: dict, agent_slug: str) -> tuple[str, discord.ui.View | None]:
    """The prompt an approver gets: the tool and the exact input the approval covers. An input too long
    to show whole gets no buttons: an approval covers only what the approver saw."""
    shown = json.dumps(payload.get("input"), indent=2, ensure_ascii=False)
    head = f"Agent **{agent_slug}** asks to run `{payload['tool']}`"
    if len(shown) > PROMPT_INPUT_LIMIT:
        return (f"{head} with an input too long to show here ({len(shown)} characters). Decide approval "
                f"`{payload['approval_id']}` in the admin or through the API."), None
    text = (f"{head}:\n```json\n{shown}\n```\n{DEADLINE_LINE}"
            f"{payload['expires_at'][:19].replace('T', ' ')} UTC.")
    view = discord.ui.View(timeout=None)
    for decision in ("allow", "deny"):
        view.add_item(ApprovalButton(payload["approval_id"], decision))
    return text, view


class AccountClient(discord.Client):
    def __init__(self, view: AccountView):
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(intents=intents, max_messages=None, chunk_guilds_at_startup=False,
                         member_cache_flags=discord.MemberCacheFlags.none())
        self.view = view
        self.watched: set = set()
        self.connected = False

    async def setup_hook(self) -> None:
        self.add_dynamic_items(ApprovalButton)

    async def on_connect(self) -> None:
        # READY: identified and receiving events. (on_ready waits for every guild's data besides, which
        # handling a message does not need.)
        logger.info("discord account %s connected as %s", self.view.account.pk, self.user)
        self.connected = True
        await _report(self.view, ChannelAccount.Status.CONNECTED)

    async def on_disconnect(self) -> None:
        self.connected = False  # discord.py reconnects on its own: on_connect or on_resumed says when it is back

    async def on_resumed(self) -> None:
        self.connected = True

    async def on_message(self, message: discord.Message) -> None:
        try:
            await self._handle(message)
        except DomainError as exc:  # refused (a closed session, a spent budget): say so rather than go quiet
            logger.info("discord account %s: message %s refused: %s", self.view.account.pk, message.id, exc.message)
            await message.channel.send(f"Sorry, I can't answer that: {exc.message}", reference=message, mention_author=False)

    async def _handle(self, message: discord.Message) -> None:
        view, bot_id = self.view, str(self.user.id)
        reference = message.reference.resolved if message.reference else None
        # A DM by the channel's type, not by a missing guild: a guild whose data has not arrived yet (just
        # after connecting) has no Guild object, and its messages must not pass as DMs.
        is_dm = isinstance(message.channel, discord.DMChannel)
        guild_id = str(message.guild.id if message.guild else getattr(message.channel, "guild_id", None) or "")
        if not is_dm and not guild_id:
            return
        verdict = gate(Inbound(
            author_id=str(message.author.id), author_is_bot=message.author.bot, content=message.content,
            guild_id=None if is_dm else guild_id, channel_id=str(message.channel.id),
            parent_channel_id=str(getattr(message.channel, "parent_id", "") or "") or None,
            mentions_bot=any(str(u.id) == bot_id for u in message.mentions),
            replies_to_bot=isinstance(reference, discord.Message) and str(reference.author.id) == bot_id,
        ), config=view.account.config, bot_id=bot_id)
        if verdict.action == "ignore":
            return
        sender = str(message.author.id)
        if verdict.action == "dm" and not await _dm_allowed(view.account, sender):
            if view.account.config.get("dm_policy", "pairing") == "pairing":
                pairing = await _pairing_request(view.account, sender, message.author.name)
                if pairing is not None:
                    await message.channel.send(PAIRING_REPLY.format(code=pairing.code))
                # Why a DM got no answer, for the operator (and the tests, which wait for it).
                logger.info("discord account %s: DM %s from %s waits for pairing (%s)", view.account.pk, message.id,
                            sender, "code sent" if pairing is not None else "code already sent")
            return
        channel_id = str(message.channel.id)
        agent = view.agents[accounts.route_agent(account=view.account, bindings=view.bindings,
                                                 guild_id="" if is_dm else guild_id, channel_id=channel_id, peer_id=sender)]
        result = await _receive(PlatformMessage(
            tenant=view.account.tenant, agent=agent, kind="discord",
            peer=f"dm:{sender}" if verdict.action == "dm" else f"channel:{channel_id}", sender=sender,
            content=verdict.prompt, message_id=str(message.id),
            reply_target={"account": view.account.pk, "channel_id": channel_id},
            queue_mode=view.account.config.get("queue_mode"),
        ))
        if not result.duplicate and result.run.pk not in self.watched:
            self.watched.add(result.run.pk)
            asyncio.create_task(self._watch(result.run.pk, message, agent.slug))

    async def _watch(self, run_id, message: discord.Message, agent_slug: str) -> None:
        """Typing while the run works, the reply previewed as it is written (`stream`), its approvals put to
        the approvers."""
        typing = asyncio.create_task(self._keep_typing(message.channel))
        preview = _Preview(message) if self.view.account.config.get("stream") else None
        try:
            async for event in follow_run(run_id):
                if event is None:
                    continue
                if event.event == TEXT_DELTA and preview is not None:
                    preview.add(event.payload)
                if event.event == APPROVAL_REQUESTED:
                    await self._ask_approvers(event.payload, agent_slug)
                if event.event in TERMINAL_EVENTS:
                    return
        except Exception:  # noqa: BLE001 - typing and prompts are courtesy; the reply goes out regardless
            logger.exception("discord account %s: following run %s failed", self.view.account.pk, run_id)
        finally:
            typing.cancel()
            if preview is not None:
                await preview.close()
            self.watched.discard(run_id)

    async def _keep_typing(self, channel) -> None:
        """Discord shows "typing…" for 10 seconds per call: renewed until cancelled. A refusal (missing
        permission, a rate limit) only costs the indicator."""
        while True:
            try:
                await channel.typing()
            except discord.HTTPException as exc:
                logger.info("discord account %s: typing refused: %s", self.view.account.pk, exc)
                return
            await asyncio.sleep(TYPING_RENEW_SECONDS)

    async def _ask_approvers(self, payload: dict, agent_slug: str) -> None:
        if not self.view.approvers:
            logger.info("discord account %s has no approvers; approval %s waits for REST or the admin",
                        self.view.account.pk, payload["approval_id"])
        for user_id in self.view.approvers:
            text, buttons = approval_prompt(payload, agent_slug)
            try:
                dm = await self.create_dm(discord.Object(int(user_id)))
                await (dm.send(text, view=buttons) if buttons else dm.send(text))
            except discord.HTTPException as exc:
                logger.warning("discord account %s: could not ask approver %s: %s", self.view.account.pk, user_id, exc)


class _Preview:
    """The reply as it is being written, in one message edited at most once every STREAM_EDIT_SECONDS
    (Discord's rate limits allow about that). It is a preview: when the run ends it is deleted, and the
    reply itself is posted by the worker like any other (durable, retried, split at 2,000 characters), so
    a bot process that stops mid-run costs a stale preview, never the answer."""

    def __init__(self, reply_to: discord.Message):
        self.reply_to = reply_to
        self.step = None
        self.text = ""
        self.shown = ""
        self.message: discord.Message | None = None
        self.edited_at = -STREAM_EDIT_SECONDS
        self.task: asyncio.Task | None = None
        self.closed = False

    def add(self, delta: dict) -> None:
        if delta.get("step") != self.step:  # a new step (after tool calls) writes a new text
            self.step, self.text = delta.get("step"), ""
        self.text += delta.get("text", "")
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._show())

    async def _show(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed:
            await asyncio.sleep(max(0.0, self.edited_at + STREAM_EDIT_SECONDS - loop.time()))
            text = self.text if len(self.text) < 1990 else self.text[:1990] + "…"
            if self.closed or text == self.shown:
                return
            try:
                if self.message is None:
                    self.message = await self.reply_to.reply(f"{text} ▌", mention_author=False)
                else:
                    await self.message.edit(content=f"{text} ▌")
            except discord.HTTPException as exc:
                logger.info("discord preview of a reply stopped: %s", exc)
                return
            self.shown, self.edited_at = text, loop.time()

    async def close(self) -> None:
        # Not cancelled: a post cancelled in flight could leave a preview whose id we never learnt.
        self.closed = True
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        if self.message is not None:
            try:
                await self.message.delete()
            except discord.HTTPException as exc:
                logger.info("discord preview could not be deleted: %s", exc)


@dataclass
class Hosted:
    view: AccountView
    client: AccountClient
    task: asyncio.Task
    retry_at: float = 0.0
    failed: bool = field(default=False)


class _ChangeNotices:
    """Redis notices of account and binding changes (channels_app/receivers.py), so a change applies at
    once; the periodic reload covers a notice lost while Redis was away."""

    def __init__(self):
        self.pubsub = None

    async def wait(self, stop: asyncio.Event, *, timeout: float) -> None:
        """Until a change notice, `stop`, or `timeout` seconds."""
        waiters = [asyncio.ensure_future(stop.wait())]
        try:
            if self.pubsub is None:
                self.pubsub = async_redis().pubsub(ignore_subscribe_messages=True)
                await self.pubsub.subscribe(accounts.ACCOUNTS_CHANGED)
            waiters.append(asyncio.ensure_future(self.pubsub.get_message(timeout=timeout)))
            # get_message's own timeout ends the wait: a read cancelled halfway would spoil the connection.
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in done:
                waiter.result()  # a Redis error surfaces here
            if stop.is_set():
                return
            while await self.pubsub.get_message(timeout=0.05):  # a burst of changes is one reload
                pass
        except Exception as exc:  # noqa: BLE001 - Redis away: the periodic reload goes on
            logger.warning("run_discord: no change notices (%s); reloading every %.0f s", type(exc).__name__, timeout)
            await self.close()
            await asyncio.wait([waiters[0]], timeout=timeout)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def close(self) -> None:
        if self.pubsub is not None:
            pubsub, self.pubsub = self.pubsub, None
            try:
                await pubsub.aclose()
            except Exception:  # noqa: BLE001 - a dead connection closes as it can
                pass


class Supervisor:
    def __init__(self):
        self.hosted: dict[int, Hosted] = {}

    async def run(self, stop: asyncio.Event) -> None:
        changes = _ChangeNotices()
        while not stop.is_set():
            try:
                await self.reconcile(await _load_accounts())
            except Exception:  # noqa: BLE001 - Postgres away: keep the bots running, look again later
                logger.exception("run_discord: could not load the accounts")
            await changes.wait(stop, timeout=settings.DISCORD_RELOAD_SECONDS)
        await changes.close()
        await asyncio.gather(*(self.stop(pk) for pk in list(self.hosted)), return_exceptions=True)

    async def reconcile(self, views: list[AccountView]) -> None:
        wanted = {view.account.pk: view for view in views}
        for pk in set(self.hosted) - set(wanted):
            await self.stop(pk)
        loop = asyncio.get_running_loop()
        for pk, view in wanted.items():
            hosted = self.hosted.get(pk)
            if hosted is None:
                self.start(view)
            elif hosted.view.account.revision != view.account.revision and hosted.view.account.secret != view.account.secret:
                await self.stop(pk)
                self.start(view)
            elif hosted.task.done() and (hosted.view.account.revision != view.account.revision or
                                         (not hosted.failed and loop.time() >= hosted.retry_at)):
                self.start(view)
            else:
                changed = hosted.view.account.revision != view.account.revision
                hosted.view = hosted.client.view = view  # settings and bindings apply to the running bot
                if changed and hosted.client.connected:
                    await _report(view, ChannelAccount.Status.CONNECTED)  # the new revision runs, without a reconnect

    def start(self, view: AccountView) -> None:
        client = AccountClient(view)
        hosted = Hosted(view=view, client=client, task=asyncio.create_task(self._serve(client)))
        self.hosted[view.account.pk] = hosted

    async def stop(self, pk: int) -> None:
        hosted = self.hosted.pop(pk, None)
        if hosted is not None:
            await hosted.client.close()
            hosted.task.cancel()

    async def _serve(self, client: AccountClient) -> None:
        view = client.view
        hosted = self.hosted[view.account.pk]
        try:
            await client.start(view.account.secret, reconnect=True)
        except discord.LoginFailure:
            hosted.failed = True
            await _report(view, ChannelAccount.Status.ERROR,
                          "Discord refused the bot token (401 Unauthorized): copy the token again from the Developer "
                          "Portal (Bot → Reset Token) and save it on this channel.")
        except discord.PrivilegedIntentsRequired:
            hosted.failed = True
            await _report(view, ChannelAccount.Status.ERROR,
                          "Discord requires the Message Content intent: enable it in the Developer Portal (Bot → "
                          "Privileged Gateway Intents), then save this channel again.")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one account's trouble must not touch the others
            logger.exception("discord account %s stopped", view.account.pk)
            hosted.retry_at = asyncio.get_running_loop().time() + RETRY_SECONDS
            await _report(view, ChannelAccount.Status.ERROR,
                          f"Could not connect to Discord ({type(exc).__name__}); trying again in {RETRY_SECONDS:.0f} s.")
        finally:
            if not client.is_closed():
                await client.close()


async def serve_forever() -> None:
    discord_endpoints_configure()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Supervisor().run(stop)
