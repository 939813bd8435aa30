"""Turning an OpenAI chat-completions request into a run on an agent session.

Sessions: with `user` (or the X-Session-Key header) the conversation is the persistent session
`agent:<agent>:<name>`, whose transcript lives in Postgres, so only the request's last user message is
new input (clients resend the whole history; the server already has it). Without one, the request's
messages seed a fresh ephemeral session that is closed once its run ends.
"""

import json
import secrets
import time
from dataclasses import dataclass, field

from django.db import transaction

from beamclaw_project.errors import InvalidInput
from sessions.content import content_parse
from sessions.idempotency import idempotency_claim, idempotency_record, request_fingerprint
from sessions.models import AgentSession, Message, Run
from sessions.providers.base import SAMPLING_PARAMS
from sessions.providers.chain import chain_providers
from sessions.providers.registry import provider_sampling
from sessions.runs import run_submit
from sessions.services import SessionConflict, SessionKeyInvalid, session_get_or_create, session_key_normalize
from tenants.models import Agent, Tenant

ROLES = {"system", "developer", "user", "assistant"}


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


def _text_of(blocks: list[dict]) -> str:
    return "\n".join(b["text"] for b in blocks if b.get("type") == "text")


def _number(body: dict, name: str, low: float, high: float) -> float | None:
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
_UNSUPPORTED = ("logit_bias", "prediction", "audio", "modalities")
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
    temperature = _number(body, "temperature", 0, 2)
    if temperature is not None:
        # Passed on OpenAI's 0..2 scale: each provider maps it to its own range (sessions/providers/base.py).
        params["temperature"] = temperature
    top_p = _number(body, "top_p", 0, 1)
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
        value = _number(body, name, -2, 2)
        if value is not None and value != neutral:
            params[name] = value
    for name, neutral in _NEUTRAL_ONLY.items():
        value = body.get(name)
        if value is not None and (isinstance(value, bool) is not isinstance(neutral, bool) or value != neutral):
            raise ChatRequestError(
                f"{name}={json.dumps(value)[:40]} is not supported by this gateway; leave it out or send {json.dumps(neutral)}.",
                name,
            )
    for name in _UNSUPPORTED:
        if body.get(name) is not None:
            raise ChatRequestError(f"{name} is not supported by this gateway; leave it out.", name)
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


def parse_chat_request(body, *, session_header: str | None, queue_mode_header: str | None = None) -> ChatRequest:
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

    system_parts: list[str] = []
    turns: list[tuple[str, list[dict]]] = []
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
        else:
            turns.append((role, blocks))
    if not turns or turns[-1][0] != "user":
        raise ChatRequestError("The last non-system message must have role 'user'.", "messages")
    if not turns[-1][1]:
        raise ChatRequestError("The last user message has no content.", "messages")

    params = _sampling_params(body)
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
    )


def _ephemeral_session(tenant: Tenant, agent: Agent, history: list[tuple[str, list[dict]]]) -> AgentSession:
    session = AgentSession.objects.create(
        tenant=tenant,
        agent=agent,
        key=f"agent:{agent.slug}:api-{secrets.token_hex(8)}",
        ephemeral=True,
        next_seq=len(history) + 1,
    )
    if history:
        Message.objects.bulk_create(
            Message(session=session, seq=i, role=role, content=blocks)
            for i, (role, blocks) in enumerate(history, start=1)
        )
    return session


@dataclass
class ChatStarted:
    run: Run
    completion_id: str
    created: int


def chat_start(*, tenant: Tenant, agent: Agent, request: ChatRequest, idempotency_key: str | None = None) -> ChatStarted:
    """Create or find the session, then submit the last user message as a run. With an idempotency key,
    a repeat of the same request returns the first one's run (and completion id) instead."""
    sampling_check_providers(agent=agent, params=request.params)
    if idempotency_key is None:
        return ChatStarted(run=_start(tenant, agent, request), completion_id=_completion_id(), created=int(time.time()))
    with transaction.atomic():
        claim = idempotency_claim(
            tenant_id=tenant.pk, endpoint="chat.completions", key=idempotency_key,
            fingerprint=request_fingerprint(request.body, request.session_name, request.queue_mode),
        )
        if claim.replay:
            return ChatStarted(run=claim.record.run, **claim.record.response)
        started = ChatStarted(run=_start(tenant, agent, request), completion_id=_completion_id(), created=int(time.time()))
        idempotency_record(claim, run=started.run, response={"completion_id": started.completion_id, "created": started.created})
        return started


def _completion_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def _start(tenant: Tenant, agent: Agent, request: ChatRequest) -> Run:
    if request.session_name:
        try:
            session = session_get_or_create(tenant=tenant, agent=agent, key=request.session_name)
        except (SessionKeyInvalid, SessionConflict) as exc:
            raise ChatRequestError(str(exc), "user")
        return _submit(session, request)
    # One transaction, so one commit (a WAL flush) on the way to the first token.
    with transaction.atomic():
        return _submit(_ephemeral_session(tenant, agent, request.turns[:-1]), request)


def _submit(session: AgentSession, request: ChatRequest) -> Run:
    return run_submit(
        session=session,
        content=request.turns[-1][1],
        trigger=Run.Trigger.OPENAI,
        params=request.params,
        mode=request.queue_mode,
    )
