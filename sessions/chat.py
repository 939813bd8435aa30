"""Turning an OpenAI chat-completions request into a run on an agent session.

Sessions (the response's X-Session-History header says which case applied, docs/openai.md):
- with `user` (or the X-Session-Key header) the conversation is the persistent session
  `agent:<agent>:<name>`. When it is new (no transcript yet) the request's earlier messages seed it
  (`seeded`); when it exists, its transcript in Postgres is authoritative and only the request's new input
  is taken (`server`): the last user message and the results of the client's tool calls;
- without one, or with `X-Session-Mode: stateless`, the request's messages seed a fresh ephemeral session
  that is closed once its run ends (`request`); a stateless session's key starts with the persistent one,
  for auditing;
- a request that answers client tool calls (`role: "tool"` messages) of an ephemeral session's run that
  is still waiting for them continues that session, so the results of the agent's own tools from that step
  are not lost.
"""

import json
import secrets
import time
from dataclasses import dataclass, field

from django.db import transaction

from beamclaw_project.errors import InvalidInput, NotFound
from sessions.client_tools import (
    agent_tool_names,
    client_tools_check_clash,
    client_tools_parse,
    tool_choice_parse,
    tool_result_block,
    tool_use_blocks,
)
from sessions.content import content_parse
from sessions.idempotency import idempotency_claim, idempotency_record, request_fingerprint
from sessions.images import turns_images_fetch
from sessions.models import AgentSession, Run, ToolCall
from sessions.providers.base import SAMPLING_PARAMS
from sessions.providers.chain import chain_providers
from sessions.providers.registry import provider_sampling
from sessions.runs import (
    UNSTREAMED_PARAM,
    SubmitReads,
    TenantAtCap,
    response_format_parse,
    run_submit,
    submit_reads,
    tenant_at_cap_from_commit,
    tenant_recently_at_cap,
    transcript_seed_if_empty_locked,
    transcript_seed_new,
)
from sessions.services import SessionConflict, SessionKeyInvalid, session_get_or_create, session_key_normalize
from tenants.models import Agent, Tenant

ROLES = {"system", "developer", "user", "assistant", "tool"}
SESSION_MODES = ("persistent", "stateless")


class ChatRequestError(InvalidInput):
    """`field` is OpenAI's `param`: the request parameter (or header) at fault."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, field=param)


@dataclass
class ChatRequest:
    model: str
    stream: bool
    system: str
    turns: list[tuple[str, list[dict]]]  # (role, Anthropic content blocks), without system messages
    session_name: str | None
    params: dict = field(default_factory=dict)
    queue_mode: str | None = None
    include_usage: bool = False
    body: dict = field(default_factory=dict)  # as sent: what makes a repeated request the same request
    # The results the client brings for tool calls it was handed (tool_call_id -> tool_result block), from
    # the `tool` messages after the last assistant message. `turns` holds them too, as the last user turn.
    tool_results: dict[str, dict] = field(default_factory=dict)
    stateless: bool = False
    # Continue the session of this run (the Responses API's previous_response_id).
    continue_run_id: str | None = None
    continue_param: str = "previous_response_id"

    @property
    def new_input(self) -> list[dict]:
        """What the request adds to a persistent session: its last turn without the tool results (the
        engine pairs those with the calls it is waiting for)."""
        return [b for b in self.turns[-1][1] if b.get("type") != "tool_result"]

    @property
    def history(self) -> list[tuple[str, list[dict]]]:
        return self.turns[:-1]


def _text_of(blocks: list[dict]) -> str:
    return "\n".join(b["text"] for b in blocks if b.get("type") == "text")


def number_param(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ChatRequestError(f"{name} must be a number between {low:g} and {high:g}.", name)
    return float(value)


# OpenAI parameters no provider here has a counterpart for: the gateway answers one choice and no log
# probabilities. Clients often send their neutral value (n=1, logprobs false) by default, which is
# accepted; anything else would silently change nothing, so it is refused by name.
_NEUTRAL_ONLY = {
    "n": 1,
    "logprobs": False,
    "top_logprobs": 0,
}
_UNSUPPORTED = {
    "logit_bias": "leave it out",
    "prediction": "leave it out",
    "audio": "leave it out",
    "modalities": "leave it out (text is the only output)",
    "web_search_options": "give the agent the web_fetch tool instead",
    "verbosity": "leave it out",
    "functions": "use tools (the deprecated functions/function_call are not served)",
    "function_call": "use tool_choice (the deprecated functions/function_call are not served)",
}
# Accepted without effect on the reply: hints for OpenAI's own service (stored completions, caching,
# abuse monitoring). The gateway always keeps the transcript (`store`).
_ACCEPTED_HINTS = ("store", "metadata", "service_tier", "safety_identifier", "prompt_cache_key")
_KNOWN = {
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "stop", "seed", "presence_penalty", "frequency_penalty", "reasoning_effort", "n", "logprobs", "top_logprobs",
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "user", *_ACCEPTED_HINTS,
}
# Parameters only some providers take (Provider.sampling): checked against the agent's providers once the
# agent is known (sampling_check_providers). Their neutral value is accepted anywhere and not passed on.
_PROVIDER_NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0}
REASONING_EFFORTS = ("low", "medium", "high")
_SEED_RANGE = (-(2**63), 2**63 - 1)


def _sampling_params(body: dict) -> dict:
    """The OpenAI sampling parameters as the run engine passes them to the provider (see docs/providers.md):
    checked here for their shape; which of them the agent's provider takes is checked by
    sampling_check_providers."""
    params: dict = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ChatRequestError("max_tokens must be a positive integer.", "max_tokens")
        params["max_tokens"] = max_tokens
    temperature = number_param(body, "temperature", 0, 2)
    if temperature is not None:
        # Passed on OpenAI's 0..2 scale: each provider maps it to its own range (sessions/providers/base.py).
        params["temperature"] = temperature
    top_p = number_param(body, "top_p", 0, 1)
    if top_p is not None:
        params["top_p"] = top_p
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not 1 <= len(stops) <= 4 or not all(isinstance(s, str) and s for s in stops):
            raise ChatRequestError("stop must be a non-empty string or an array of 1 to 4 non-empty strings.", "stop")
        params["stop"] = stops
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in REASONING_EFFORTS:
            raise ChatRequestError(f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}.", "reasoning_effort")
        params["effort"] = effort
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not _SEED_RANGE[0] <= seed <= _SEED_RANGE[1]:
            raise ChatRequestError("seed must be a 64-bit integer.", "seed")
        params["seed"] = seed
    for name, neutral in _PROVIDER_NEUTRAL.items():
        value = number_param(body, name, -2, 2)
        if value is not None and value != neutral:
            params[name] = value
    for name, neutral in _NEUTRAL_ONLY.items():
        value = body.get(name)
        if value is not None and (isinstance(value, bool) is not isinstance(neutral, bool) or value != neutral):
            raise ChatRequestError(
                f"{name}={json.dumps(value)[:40]} is not supported by this gateway; leave it out or send {json.dumps(neutral)}.",
                name,
            )
    for name, advice in _UNSUPPORTED.items():
        if body.get(name) is not None:
            raise ChatRequestError(f"{name} is not supported by this gateway; {advice}.", name)
    unknown = sorted(name for name in body if name not in _KNOWN and name not in _UNSUPPORTED)
    if unknown:
        # OpenAI answers an unknown argument with a 400 too: dropping it would hide a client's mistake.
        raise ChatRequestError(f"Unrecognized request argument supplied: {', '.join(unknown)}.", unknown[0])
    return params


# The request parameter a run param came from, for naming it in a refusal.
_PARAM_NAMES = {"effort": "reasoning_effort"}


def sampling_check_providers(*, agent: Agent, params: dict) -> None:
    """Refuse (400, naming it) a sampling parameter that a provider the agent may call cannot take: its own
    or a fallback's. Refused up front rather than dropped, or failed on in the middle of a run."""
    used = [name for name in SAMPLING_PARAMS if params.get(name) is not None]
    if not used:
        return
    for index, provider in enumerate(chain_providers(agent)):
        accepted = provider_sampling(provider)
        if accepted is None:
            continue  # an unregistered provider: the run fails saying which ones exist
        for name in used:
            if name not in accepted:
                param = _PARAM_NAMES.get(name, name)
                whose = (f"agent '{agent.slug}' runs on" if index == 0
                         else f"agent '{agent.slug}' falls back to")
                raise ChatRequestError(
                    f"{param} is not supported by provider '{provider}', which {whose}; leave it out"
                    + ("." if index == 0 else " or remove that fallback."),
                    param,
                )


def parse_chat_request(body, *, session_header: str | None, queue_mode_header: str | None = None,
                       session_mode_header: str | None = None) -> ChatRequest:
    if not isinstance(body, dict):
        raise ChatRequestError("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ChatRequestError("model is required and must be the slug of one of your agents (see GET /v1/models).", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError("messages is required and must be a non-empty array", "messages")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ChatRequestError("stream must be a boolean.", "stream")

    system_parts, turns, tool_results = _conversation(messages)
    params = _sampling_params(body)
    response_format = response_format_parse(body.get("response_format"))
    if response_format is not None:
        params["response_format"] = response_format
    client_tools = client_tools_parse(body.get("tools"))
    if client_tools:
        params["client_tools"] = client_tools
    # A forced tool may be the client's or the agent's: checked once the agent is known (client_tools_check).
    tool_choice = tool_choice_parse(body.get("tool_choice"), parallel=body.get("parallel_tool_calls"))
    if tool_choice is not None:
        params["tool_choice"] = tool_choice
    system = "\n\n".join(p for p in system_parts if p)
    if system:
        params["system"] = system

    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise ChatRequestError("stream_options must be an object.", "stream_options")

    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise ChatRequestError("user must be a string.", "user")
    session_name = (session_header or user or "").strip() or None
    if session_name is not None and len(model.strip()) <= Agent._meta.get_field("slug").max_length:
        # The key is agent:<model>:<name> (model is the agent's slug): checked here, before anything is
        # written, so the 400 names where the name came from. (A model longer than any slug is no agent:
        # that is a 404, and the key is never built.)
        try:
            session_key_normalize(agent_slug=model.strip(), key=session_name)
        except SessionKeyInvalid as exc:
            raise ChatRequestError(str(exc), "X-Session-Key" if (session_header or "").strip() else "user")

    if queue_mode_header is not None and queue_mode_header not in AgentSession.QueueMode.values:
        raise ChatRequestError(
            f"X-Queue-Mode must be one of {', '.join(AgentSession.QueueMode.values)}.", "X-Queue-Mode"
        )
    if session_mode_header is not None and session_mode_header not in SESSION_MODES:
        raise ChatRequestError(f"X-Session-Mode must be one of {', '.join(SESSION_MODES)}.", "X-Session-Mode")

    return ChatRequest(
        queue_mode=queue_mode_header,
        model=model.strip(),
        stream=stream,
        system=system,
        turns=turns,
        session_name=session_name,
        params=params,
        include_usage=bool((stream_options or {}).get("include_usage")),
        body=body,
        tool_results=tool_results,
        stateless=session_mode_header == "stateless",
    )


def _conversation(messages: list) -> tuple[list[str], list[tuple[str, list[dict]]], dict[str, dict]]:
    """The request's messages as (system texts, alternating turns of Messages API blocks, the results of the
    last assistant message's tool calls). An assistant message's `tool_calls` become tool_use blocks and
    each `tool` message a tool_result block at the start of the next user turn; every call must be answered
    before the conversation goes on, as OpenAI requires."""
    system_parts: list[str] = []
    turns: list[tuple[str, list[dict]]] = []
    asked: dict[str, str] = {}  # the open calls of the last assistant message: id -> where it was made
    answered: dict[str, dict] = {}
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ChatRequestError(f"{where} must be an object with 'role' and 'content'.", where)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise ChatRequestError(f"{where}.role must be one of {', '.join(sorted(ROLES))}.", f"{where}.role")
        blocks = content_parse(message.get("content"), where=f"{where}.content", allow_empty=True)
        if role in ("system", "developer"):
            system_parts.append(_text_of(blocks))
            continue
        if role == "tool":
            call_id = message.get("tool_call_id")
            result = tool_result_block(call_id, blocks, where=f"{where}.tool_call_id")
            if call_id not in asked:
                raise ChatRequestError(
                    f"{where}.tool_call_id {call_id!r} answers no tool call of the assistant message before it"
                    + (" (or answers it twice)." if call_id in answered else "."), f"{where}.tool_call_id",
                )
            del asked[call_id]
            answered[call_id] = result
            turn_add(turns, "user", [result])
            continue
        if asked:
            call_id, made_at = next(iter(asked.items()))
            raise ChatRequestError(
                f"{made_at} (id {call_id!r}) has no `tool` message answering it before {where}; send each call's "
                "result as a tool message right after the assistant message.", "messages",
            )
        if role == "assistant":
            calls = message.get("tool_calls")
            if calls:
                tool_uses = tool_use_blocks(calls, where=f"{where}.tool_calls")
                blocks = blocks + tool_uses
                asked = {block["id"]: f"{where}.tool_calls[{n}]" for n, block in enumerate(tool_uses)}
            answered = {}
        turn_add(turns, role, blocks)
    if not turns or turns[-1][0] != "user":
        raise ChatRequestError("The last non-system message must have role 'user' or 'tool'.", "messages")
    if asked:
        call_id, made_at = next(iter(asked.items()))
        raise ChatRequestError(f"{made_at} (id {call_id!r}) has no `tool` message answering it.", "messages")
    if not turns[-1][1]:
        raise ChatRequestError("The last user message has no content.", "messages")
    return system_parts, turns, answered


def turn_add(turns: list[tuple[str, list[dict]]], role: str, blocks: list[dict]) -> None:
    """Consecutive messages of one role make one turn (a tool message's result and the user's next words)."""
    if turns and turns[-1][0] == role:
        turns[-1] = (role, turns[-1][1] + blocks)
    else:
        turns.append((role, blocks))


def _ephemeral_session(tenant: Tenant, agent: Agent, history: list[tuple[str, list[dict]]], *,
                       key_prefix: str | None = None) -> AgentSession:
    """A session of the request's own messages, closed after its run (unless it hands out tool calls). It is
    not written yet: it goes to Postgres with its run (run_start_locked), in that round trip, and so do the
    request's earlier messages."""
    session = AgentSession(
        tenant=tenant,
        agent=agent,
        key=f"{key_prefix or f'agent:{agent.slug}'}:api-{secrets.token_hex(8)}",
        ephemeral=True,
    )
    if history:
        transcript_seed_new(session, history)
    return session


# X-Session-History: where the conversation the model sees came from (docs/openai.md).
HISTORY_SEEDED = "seeded"  # a new persistent session, started from the request's earlier messages
HISTORY_SERVER = "server"  # an existing session: its stored transcript; the request's earlier messages unused
HISTORY_REQUEST = "request"  # an ephemeral session made of the request's messages


@dataclass
class ChatStarted:
    run: Run
    completion_id: str
    created: int
    history: str = HISTORY_REQUEST
    session_key: str = ""

    def __post_init__(self):
        # Read here, in the request's database thread: an async edge may not load it later.
        self.session_key = self.run.session.key


def client_tools_check(*, agent: Agent, params: dict, param: str = "tools") -> None:
    """What needs the agent: no client tool named like one of its own, and a forced tool that exists."""
    client_tools = params.get("client_tools", ())
    client_tools_check_clash(agent, client_tools, param=param)
    choice = params.get("tool_choice") or {}
    names = agent_tool_names(agent) | {tool["name"] for tool in client_tools}
    if choice.get("type") == "tool" and choice["name"] not in names:
        raise ChatRequestError(
            f"tool_choice names the function {choice['name']!r}, which is not among the tools offered "
            f"({', '.join(sorted(names)) or 'none'}).", "tool_choice",
        )
    if choice.get("type") == "any" and not names:
        raise ChatRequestError("tool_choice is 'required' but no tools are offered.", "tool_choice")


def chat_start(*, tenant: Tenant, agent: Agent, request: ChatRequest, idempotency_key: str | None = None,
               endpoint: str = "chat.completions") -> ChatStarted:
    """Create or find the session, then submit the request's new input as a run. With an idempotency key,
    a repeat of the same request returns the first one's run (and completion id) instead."""
    sampling_check_providers(agent=agent, params=request.params)
    client_tools_check(agent=agent, params=request.params)
    # Images linked by URL are fetched now: on this thread, before any transaction (sessions/images.py).
    # Of a conversation the server already holds, only the new turn is used, so only its images.
    if _history_used(tenant, agent, request):
        request.turns = turns_images_fetch(request.turns)
    else:
        request.turns = [*request.turns[:-1], turns_images_fetch(request.turns[-1:])[0]]
    if idempotency_key is None:
        return _start(tenant, agent, request)
    with transaction.atomic():
        claim = idempotency_claim(
            tenant_id=tenant.pk, endpoint=endpoint, key=idempotency_key,
            fingerprint=request_fingerprint(request.body, request.session_name, request.queue_mode),
        )
        if claim.replay:
            return ChatStarted(run=claim.record.run, **claim.record.response)
        started = _start(tenant, agent, request)
        idempotency_record(claim, run=started.run, response={
            "completion_id": started.completion_id, "created": started.created, "history": started.history,
        })
        return started


def _completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def _start(tenant: Tenant, agent: Agent, request: ChatRequest) -> ChatStarted:
    session = _session_continued(tenant, agent, request)
    if session is not None:
        history = HISTORY_SERVER
        run = _submit(session, request, content=request.new_input, tool_results=request.tool_results)
    elif request.session_name and not request.stateless:
        try:
            session = session_get_or_create(tenant=tenant, agent=agent, key=request.session_name)
        except (SessionKeyInvalid, SessionConflict) as exc:
            raise ChatRequestError(str(exc), "user")
        # One lock of the session, with what the submit reads, for both: whether its transcript is empty, and
        # the run's submit. A refusal gives the whole transaction up.
        with transaction.atomic():
            reads = submit_reads(session.pk, session.tenant_id)
            if transcript_seed_if_empty_locked(reads.session, turns=request.history):
                history = HISTORY_SEEDED
                run = _submit(reads.session, request, content=request.turns[-1][1], reads=reads)
            else:
                history = HISTORY_SERVER
                run = _submit(reads.session, request, content=request.new_input, tool_results=request.tool_results,
                              reads=reads)
    else:
        history = HISTORY_REQUEST
        key_prefix = None
        if request.session_name:
            key_prefix = session_key_normalize(agent=agent, key=request.session_name) + ":stateless"
        try:
            # (A tenant this process just saw at its cap goes the second way at once: submit.py.)
            run = _ephemeral_submit(tenant, agent, request, key_prefix=key_prefix,
                                    room_counted_first=tenant_recently_at_cap(tenant.pk))
        except TenantAtCap:
            # The tenant is at its max_concurrent_runs, or runs wait for its room: submitted again, the run is
            # counted under the tenant's lock and starts, or waits queued for a slot.
            run = _ephemeral_submit(tenant, agent, request, key_prefix=key_prefix, room_counted_first=True)
    return ChatStarted(run=run, completion_id=_completion_id(), created=int(time.time()), history=history)


def _history_used(tenant: Tenant, agent: Agent, request: ChatRequest) -> bool:
    """Whether the request's earlier turns may go into a transcript (a new session's), as _start decides."""
    if request.continue_run_id is not None:
        return False
    if request.tool_results and not request.session_name and ToolCall.objects.filter(
        run__tenant=tenant, status=ToolCall.Status.AWAITING_CLIENT, tool_use_id__in=list(request.tool_results)
    ).exists():
        return False
    if request.session_name and not request.stateless and len(request.turns) > 1:
        key = session_key_normalize(agent=agent, key=request.session_name)
        return not AgentSession.objects.filter(tenant=tenant, key=key, next_seq__gt=1).exists()
    return True


def _session_continued(tenant: Tenant, agent: Agent, request: ChatRequest) -> AgentSession | None:
    """The session a request continues without naming it: the one of `continue_run_id` (Responses API), or
    the ephemeral session whose run handed out the tool calls the request answers."""
    if request.continue_run_id is not None:
        run = Run.objects.select_related("session").filter(tenant=tenant, pk=request.continue_run_id).first()
        if run is None:
            raise NotFound(f"{request.continue_param} {request.continue_run_id!r} was not found.",
                           field=request.continue_param)
        session = run.session
    elif request.tool_results and not request.session_name:
        call = (ToolCall.objects.select_related("run__session")
                .filter(run__tenant=tenant, status=ToolCall.Status.AWAITING_CLIENT,
                        tool_use_id__in=list(request.tool_results)).first())
        if call is None:
            return None  # not ours, or answered already: the request's own history stands
        session = call.run.session
    else:
        return None
    if session.agent_id != agent.pk:
        raise ChatRequestError(
            f"That conversation is with agent '{session.agent.slug}', not '{agent.slug}'; send model "
            f"'{session.agent.slug}'.", "model",
        )
    return session


def _ephemeral_submit(tenant: Tenant, agent: Agent, request: ChatRequest, *, key_prefix: str | None,
                      room_counted_first: bool = False) -> Run:
    """The request's run in a session of its own messages (see run_submit's `session_is_new`)."""
    # A transaction of its own (not a savepoint in the caller's: the idempotency key's) counts the tenant's
    # room in its commit.
    at_commit = not room_counted_first and not transaction.get_connection().in_atomic_block
    # One transaction, so one commit (a WAL flush) on the way to the first token.
    with tenant_at_cap_from_commit(), transaction.atomic():
        session = _ephemeral_session(tenant, agent, request.history, key_prefix=key_prefix)
        return _submit(session, request, content=request.turns[-1][1], session_is_new=True,
                       room_counted_first=room_counted_first, room_counted_at_commit=at_commit)


def _submit(session: AgentSession, request: ChatRequest, *, content: list[dict], tool_results=None,
            session_is_new: bool = False, reads: SubmitReads | None = None, room_counted_first: bool = False,
            room_counted_at_commit: bool = False) -> Run:
    # A reply that is not streamed is read whole at the run's end: its deltas may travel in fewer, larger
    # pieces meanwhile (delta_window.py).
    params = request.params if request.stream else {**request.params, UNSTREAMED_PARAM: True}
    return run_submit(
        session=session,
        content=content,
        trigger=Run.Trigger.OPENAI,
        params=params,
        mode=request.queue_mode,
        tool_results=tool_results or None,
        session_is_new=session_is_new,
        reads=reads,
        room_counted_first=room_counted_first,
        room_counted_at_commit=room_counted_at_commit,
    )
