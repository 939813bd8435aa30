"""The `message` tool: an agent posts a message through one of its tenant's channel accounts.

ChannelsAppConfig.ready() registers MESSAGE_TOOL_SPEC with the tool registry (tools/), in `group:messaging`;
tool policy and approvals apply there as for any tool (an approval allowlist matches the subject
`<channel>:<to>`). The tool only sees enabled accounts of the calling agent's tenant: another tenant's
account, a disabled one and one that does not exist read the same.

Sending is synchronous and one attempt (channels_app/outbound.py): the model reads the outcome, delivered
or the error, in the tool result, and a transient error says it may be worth trying again. Retrying in the
background would leave the model believing in a message that may never arrive. The delivery id is
`tool-<call id>`, the same if a worker dies and the call is run again, so a receiver can drop the repeat.
"""

import uuid

from channels_app.models import ChannelAccount
from channels_app.outbound import MAX_TO_LENGTH, channel_message_send
from channels_app.transport import DeliveryError
from tools.base import ToolContext, ToolInputError, ToolSpec, error_result

MAX_TEXT_LENGTH = 20_000
_LISTED = 20

MESSAGE_TOOL = {
    "name": "message",
    "description": (
        "Send a message through one of your channels (a Discord bot, a webhook). `channel` is the channel's "
        "name or id, `to` where on it (a Discord channel or user id; for a webhook, the recipient its receiver "
        "expects), `text` the message. The result says whether it was delivered; a message is tried once."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            # Untyped here because either a name or an id is fine (the checker takes one type); _check says which.
            "channel": {"description": "the channel's name, or its id"},
            "to": {"type": "string", "maxLength": MAX_TO_LENGTH, "description": "the recipient on the channel"},
            "text": {"type": "string", "maxLength": MAX_TEXT_LENGTH, "description": "the message"},
        },
        "required": ["channel", "to", "text"],
        "additionalProperties": False,
    },
}


def _check(tool_input: dict) -> None:
    channel = tool_input.get("channel")
    if isinstance(channel, bool) or not isinstance(channel, (str, int)) or (isinstance(channel, str) and len(channel) > 100):
        raise ToolInputError("input.channel", "must be a channel's name (a string) or id (an integer)")


def _account(tenant, channel) -> ChannelAccount | None:
    accounts = ChannelAccount.objects.filter(tenant=tenant, enabled=True)
    if isinstance(channel, int) and not isinstance(channel, bool):
        return accounts.filter(pk=channel).first()
    if isinstance(channel, str) and channel.strip():
        name = channel.strip()
        return (accounts.filter(pk=int(name)).first() if name.isdigit() else None) or accounts.filter(name=name).first()
    return None


def run_message_tool(context: ToolContext, tool_input: dict) -> dict:
    account = _account(context.tenant, tool_input.get("channel"))
    if account is None:
        names = list(ChannelAccount.objects.filter(tenant=context.tenant, enabled=True).values_list("name", flat=True)[:_LISTED])
        known = f"Your channels: {', '.join(names)}." if names else "You have no enabled channels."
        return error_result(f"No enabled channel '{tool_input.get('channel')}'. {known}")
    call = context.call.id if context.call is not None else uuid.uuid4().hex
    delivery_id = f"tool-{call}"
    try:
        receipt = channel_message_send(
            account=account, to=tool_input.get("to", ""), text=tool_input.get("text", ""), delivery_id=delivery_id,
            data={"kind": "message", "agent": context.agent.slug},
        )
    except DeliveryError as exc:
        again = " (a passing failure: trying again later may work)" if exc.transient else ""
        return error_result(f"Not delivered through '{account.name}': {exc.message}{again}", delivery_id=delivery_id)
    return {"ok": True, "output": f"Delivered through '{account.name}' to {tool_input['to']}.",
            "delivery_id": receipt.delivery_id, "remote_id": receipt.remote_id}


MESSAGE_TOOL_SPEC = ToolSpec(
    name=MESSAGE_TOOL["name"],
    description=MESSAGE_TOOL["description"],
    input_schema=MESSAGE_TOOL["input_schema"],
    group="group:messaging",
    run=run_message_tool,
    subject=lambda tool_input: f"{tool_input.get('channel', '')}:{tool_input.get('to', '')}",
    check=_check,
)
