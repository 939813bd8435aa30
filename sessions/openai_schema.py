"""OpenAPI for the OpenAI-compatible edge, `/v1/*`: plain async views (sessions/openai_api.py,
sessions/responses_api.py) that drf-spectacular cannot see, so their paths and schemas are written here and
a postprocessing hook (`add_openai_paths`, listed in SPECTACULAR_SETTINGS) adds them to the document.

The shapes are OpenAI's, narrowed to what the gateway accepts: a parameter it refuses is absent, or allowed
only at its neutral value (`n: 1`), so a client generated from this document does not build a request the
gateway would refuse for its shape. Request objects are closed (`additionalProperties: false`) because the
gateway answers an unknown argument with a 400, as OpenAI does. The document is OpenAPI 3.0: `nullable`
instead of a null type, one-value `enum` instead of `const`, and a `$ref` that needs a sibling goes in an
`allOf`.

Schemas are composed from small named components; the hook refuses to overwrite a component a DRF serializer
already produced under the same name. tests/test_api_schema.py holds them against real requests and
responses, and the request's properties against the parameters sessions/chat.py knows.
"""

from sessions.models import AgentSession

TAG = "openai"
SECURITY = [{"ApiKey": []}]

# --- building blocks ---------------------------------------------------------------------------------


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict) -> dict:
    # OpenAPI 3.0 ignores the siblings of a $ref, so a nullable reference is wrapped.
    if "$ref" in schema:
        return {"allOf": [schema], "nullable": True}
    return {**schema, "nullable": True}


def described(schema: dict, description: str) -> dict:
    if "$ref" in schema:
        return {"allOf": [schema], "description": description}
    return {**schema, "description": description}


def literal(value: str, description: str = "") -> dict:
    schema = {"type": "string", "enum": [value]}
    return described(schema, description) if description else schema


def string(description: str = "", **extra) -> dict:
    schema = {"type": "string", **extra}
    return described(schema, description) if description else schema


def integer(description: str = "", **extra) -> dict:
    schema = {"type": "integer", **extra}
    return described(schema, description) if description else schema


def number(description: str = "", **extra) -> dict:
    schema = {"type": "number", **extra}
    return described(schema, description) if description else schema


def boolean(description: str = "", **extra) -> dict:
    schema = {"type": "boolean", **extra}
    return described(schema, description) if description else schema


def array(items: dict, description: str = "", **extra) -> dict:
    schema = {"type": "array", "items": items, **extra}
    return described(schema, description) if description else schema


def obj(properties: dict, *, required=(), description: str = "", closed: bool = False, **extra) -> dict:
    schema: dict = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return {**schema, **extra}


def json_object(description: str) -> dict:
    return {"type": "object", "additionalProperties": True, "description": description}


def tagged_union(tag: str, variants: dict[str, str], description: str = "") -> dict:
    """One of the named components, told apart by the value of their `tag` property."""
    schema = {
        "oneOf": [ref(name) for name in variants.values()],
        "discriminator": {"propertyName": tag, "mapping": {value: ref(name)["$ref"] for value, name in variants.items()}},
    }
    return described(schema, description) if description else schema


# --- shared pieces -------------------------------------------------------------------------------------

MODEL_FIELD = string("The slug of one of your agents (GET /v1/models).", minLength=1)
USER_FIELD = string(
    "A session name: the conversation is the agent's persistent session `agent:<model>:<user>`, whose transcript "
    "the server keeps (see the X-Session-History response header). The X-Session-Key header takes precedence."
)
METADATA_FIELD = obj(
    {}, description="Accepted and not used (a hint for OpenAI's own service).", additionalProperties={"type": "string"}
)
ACCEPTED_HINT = "Accepted and not used (a hint for OpenAI's own service)."
TOOL_NAME = string("1 to 64 letters, digits, '_' or '-'.", pattern="^[A-Za-z0-9_-]{1,64}$")
TOOL_PARAMETERS = json_object(
    "A JSON Schema of type `object` for the arguments (at most 50,000 characters); an empty object schema when left out."
)
EFFORT = string("How much the model reasons before answering, where its provider supports it.", enum=["low", "medium", "high"])

ERROR_SCHEMAS = {
    "OpenAIErrorDetail": obj(
        {
            "message": string("What went wrong, for a person to read."),
            "type": string("e.g. invalid_request_error, permission_error, rate_limit_error, insufficient_quota, "
                           "upstream_error, timeout, run_aborted, server_restarting."),
            "param": nullable(string("The request parameter or header at fault, e.g. `messages[2].content`.")),
            "code": nullable(string("Stable, for programs: e.g. invalid_request, invalid_api_key, model_not_found, "
                                    "request_too_large, idempotency_key_reused, rate_limited, overloaded, timeout.")),
        },
        required=("message", "type"),
    ),
    "OpenAIError": obj(
        {"error": ref("OpenAIErrorDetail")}, required=("error",),
        description="Every error on /v1, in OpenAI's shape. A stream that already started reports one as an event.",
    ),
}

_ERROR_STATUSES = {
    "400": "The request is malformed, or uses a parameter the gateway or the agent's provider cannot honour "
           "(`param` names it).",
    "401": "Missing, invalid or revoked API key.",
    "403": "The key lacks the `chat` scope, or the tenant is suspended.",
    "404": "No such model (agent) or object of this tenant.",
    "409": "The run was aborted, the session is closed, no tool calls wait for the results sent, or the "
           "Idempotency-Key was used for another request.",
    "413": "The request body is larger than 2 MB.",
    "429": "Rate limit or token budget exceeded; see Retry-After.",
    "502": "The agent's model provider failed.",
    "503": "The model provider is overloaded, or the server is restarting (the run goes on; see Retry-After).",
    "504": "No answer in time; the run goes on (its id is in X-Run-Id).",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


def error_responses(*statuses: str) -> dict:
    return {
        status: {
            "description": _ERROR_STATUSES[status],
            "content": {"application/json": {"schema": ref("OpenAIError")}},
            **({"headers": RETRY_AFTER} if status in ("429", "503") else {}),
        }
        for status in statuses
    }


def header(name: str, description: str, schema: dict | None = None) -> dict:
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def json_body(name: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": ref(name)}}}


# --- models ------------------------------------------------------------------------------------------

MODEL_SCHEMAS = {
    "OpenAIModel": obj(
        {
            "id": string("The agent's slug: what `model` takes."),
            "object": literal("model"),
            "created": integer("When the agent was created (Unix seconds)."),
            "owned_by": string("The tenant's slug."),
        },
        required=("id", "object", "created", "owned_by"),
        description="One of the tenant's agents, as an OpenAI model.",
    ),
    "OpenAIModelList": obj(
        {"object": literal("list"), "data": array(ref("OpenAIModel"))}, required=("object", "data"),
    ),
}

# --- chat completions: the request ---------------------------------------------------------------------

CONTENT_SCHEMAS = {
    "ChatTextPart": obj({"type": literal("text"), "text": string()}, required=("type", "text")),
    "ChatImageUrlPart": obj(
        {
            "type": literal("image_url"),
            "image_url": obj(
                {
                    "url": string("An http(s) URL the gateway fetches under its outbound address policy and size caps, "
                                  "or a data URL `data:image/png;base64,...`.", minLength=1),
                    "detail": string(enum=["auto", "low", "high"]),
                },
                required=("url",),
            ),
        },
        required=("type", "image_url"),
    ),
    "ChatImagePart": obj(
        {
            "type": literal("image"),
            "source": obj(
                {
                    "type": string(enum=["url", "base64"]),
                    "url": string("For `url`: an http(s) URL."),
                    "media_type": string("For `base64`: e.g. image/png.", pattern="^image/"),
                    "data": string("For `base64`: the image, base64-encoded."),
                },
                required=("type",),
            ),
        },
        required=("type", "source"),
        description="An image in the Messages API's dialect, accepted beside OpenAI's `image_url`.",
    ),
    "ChatContentPart": tagged_union(
        "type", {"text": "ChatTextPart", "image_url": "ChatImageUrlPart", "image": "ChatImagePart"}
    ),
}
CONTENT = described(
    {"oneOf": [{"type": "string"}, array(ref("ChatContentPart"))]},
    "A string, or text and image parts. A message holds at most 250,000 characters of text.",
)
TEXT_CONTENT = {"oneOf": [{"type": "string"}, array(ref("ChatTextPart"))]}

TOOL_CALL_SCHEMAS = {
    "ChatToolCall": obj(
        {
            "id": string("The call's id; the `tool` message with its result carries it as `tool_call_id`."),
            "type": literal("function"),
            "function": obj(
                {"name": string(), "arguments": string("The arguments, JSON-encoded (an object).")},
                required=("name", "arguments"),
            ),
        },
        required=("id", "type", "function"),
        description="A call of one of the client's tools, for the client to run.",
    ),
}


def _message(role: str, properties: dict, required=(), description: str = "") -> dict:
    return obj({"role": literal(role), **properties}, required=("role", *required), description=description)


MESSAGE_SCHEMAS = {
    "ChatSystemMessage": _message(
        "system", {"content": TEXT_CONTENT, "name": string()}, ("content",),
        "Instructions added to the agent's own system prompt (joined with any developer messages).",
    ),
    "ChatDeveloperMessage": _message(
        "developer", {"content": TEXT_CONTENT, "name": string()}, ("content",), "As a system message.",
    ),
    "ChatUserMessage": _message("user", {"content": CONTENT, "name": string()}, ("content",)),
    "ChatAssistantMessage": _message(
        "assistant",
        {
            "content": nullable(CONTENT),
            "name": string(),
            "tool_calls": array(ref("ChatToolCall"), "Calls this turn made; each is answered by a `tool` message "
                                                     "right after it."),
        },
        description="An earlier reply, sent back as history.",
    ),
    "ChatToolMessage": _message(
        "tool",
        {"content": TEXT_CONTENT, "tool_call_id": string("The id of the call this answers.", minLength=1, maxLength=64)},
        ("content", "tool_call_id"),
        "The result of one of the client's tool calls.",
    ),
    "ChatMessage": tagged_union("role", {
        "system": "ChatSystemMessage", "developer": "ChatDeveloperMessage", "user": "ChatUserMessage",
        "assistant": "ChatAssistantMessage", "tool": "ChatToolMessage",
    }),
}

TOOL_SCHEMAS = {
    "ChatFunction": obj(
        {
            "name": TOOL_NAME,
            "description": string(),
            "parameters": TOOL_PARAMETERS,
            "strict": boolean("Accepted; the arguments are not held to the schema."),
        },
        required=("name",),
    ),
    "ChatTool": obj(
        {"type": literal("function"), "function": ref("ChatFunction")},
        required=("type", "function"),
        description="A client-side function: offered to the model beside the agent's own tools (a name clash is "
                    "a 400). A call to it ends the run with finish_reason `tool_calls`.",
    ),
    "ChatNamedToolChoice": obj(
        {"type": literal("function"), "function": obj({"name": TOOL_NAME}, required=("name",))},
        required=("type", "function"),
    ),
    "ChatToolChoice": described(
        {"oneOf": [string(enum=["auto", "none", "required"]), ref("ChatNamedToolChoice")]},
        "Which tool the model must call: a forced choice (`required`, a named function) holds for the run's first "
        "model call only; `none` for all.",
    ),
}


def _json_schema_format(flat: bool) -> dict:
    """OpenAI's json_schema response format: nested under `json_schema` in Chat Completions, flat in the
    Responses API's `text.format`."""
    spec = {
        "name": string("1 to 64 letters, digits, '_' or '-'.", pattern="^[A-Za-z0-9_-]{1,64}$"),
        "description": string(),
        "schema": json_object("The JSON Schema the reply must satisfy."),
        "strict": nullable(boolean()),
    }
    if flat:
        return obj({"type": literal("json_schema"), **spec}, required=("type", "name", "schema"), closed=True)
    return obj(
        {"type": literal("json_schema"), "json_schema": obj(spec, required=("name", "schema"), closed=True)},
        required=("type", "json_schema"), closed=True,
    )


RESPONSE_FORMAT_SCHEMAS = {
    "ResponseFormatText": obj({"type": literal("text")}, required=("type",), closed=True),
    "ResponseFormatJsonObject": obj(
        {"type": literal("json_object")}, required=("type",), closed=True,
        description="The reply is a JSON object (validated; one repair attempt, then an error).",
    ),
    "ResponseFormatJsonSchema": described(
        _json_schema_format(flat=False),
        "The reply is JSON satisfying `schema` (validated; one repair attempt, then an error).",
    ),
    "ChatResponseFormat": tagged_union("type", {
        "text": "ResponseFormatText", "json_object": "ResponseFormatJsonObject", "json_schema": "ResponseFormatJsonSchema",
    }),
}

CHAT_REQUEST = obj(
    {
        "model": MODEL_FIELD,
        "messages": array(ref("ChatMessage"), "The conversation, oldest first; it ends with a user message or with the "
                                              "tool messages answering the last assistant message's tool calls.",
                          minItems=1),
        "stream": boolean("Answer as Server-Sent Events (chat.completion.chunk objects, then `data: [DONE]`).",
                          default=False),
        "stream_options": nullable(obj({"include_usage": boolean("A last chunk with `usage` and no choices.")})),
        "tools": array(ref("ChatTool"), maxItems=128),
        "tool_choice": ref("ChatToolChoice"),
        "parallel_tool_calls": boolean("false: at most one tool call per model turn."),
        "response_format": ref("ChatResponseFormat"),
        "max_completion_tokens": nullable(integer("Capped by the agent's own max_tokens.", minimum=1)),
        "max_tokens": nullable(integer("As max_completion_tokens (which wins when both are sent).", minimum=1)),
        "temperature": nullable(number(minimum=0, maximum=2)),
        "top_p": nullable(number(minimum=0, maximum=1)),
        "stop": nullable(described(
            {"oneOf": [string(minLength=1), array(string(minLength=1), minItems=1, maxItems=4)]},
            "Up to 4 sequences that end the reply.",
        )),
        "seed": nullable(integer("Passed to providers that take one (a 400 names the provider that does not).",
                                 format="int64")),
        "presence_penalty": nullable(number("Values other than 0 only for providers that take it.", minimum=-2, maximum=2)),
        "frequency_penalty": nullable(number("Values other than 0 only for providers that take it.", minimum=-2, maximum=2)),
        "reasoning_effort": nullable(EFFORT),
        "user": USER_FIELD,
        "n": nullable(integer("The gateway answers one choice: only 1 is accepted.", minimum=1, maximum=1)),
        "logprobs": nullable(boolean("Log probabilities are not available: only false is accepted.")),
        "top_logprobs": nullable(integer("Only 0 is accepted.", minimum=0, maximum=0)),
        "metadata": nullable(METADATA_FIELD),
        "store": nullable(boolean(ACCEPTED_HINT + " The gateway always keeps the transcript.")),
        "service_tier": nullable(string(ACCEPTED_HINT)),
        "safety_identifier": string(ACCEPTED_HINT),
        "prompt_cache_key": string(ACCEPTED_HINT),
    },
    required=("model", "messages"),
    closed=True,
    description="OpenAI's chat completions request, as far as the gateway serves it. Other OpenAI parameters "
                "(logit_bias, audio, modalities, prediction, functions, ...) are refused with a 400 naming them.",
)

# --- chat completions: the answer ----------------------------------------------------------------------

FINISH_REASON = string(
    "`stop`: the model finished (or hit a stop sequence); `length`: max_tokens reached; `tool_calls`: the model "
    "called client tools, whose calls are in `tool_calls`.",
    enum=["stop", "length", "tool_calls"],
)

CHAT_RESPONSE_SCHEMAS = {
    "ChatCompletionUsage": obj(
        {"prompt_tokens": integer(minimum=0), "completion_tokens": integer(minimum=0), "total_tokens": integer(minimum=0)},
        required=("prompt_tokens", "completion_tokens", "total_tokens"),
        description="Tokens of the whole run: every model call it made, the agent's own tool steps included.",
    ),
    "ChatCompletionMessage": obj(
        {
            "role": literal("assistant"),
            "content": nullable(string("The reply's text; null when the turn only called tools.")),
            "tool_calls": array(ref("ChatToolCall")),
        },
        required=("role", "content"),
    ),
    "ChatCompletionChoice": obj(
        {"index": integer("Always 0: one choice.", minimum=0, maximum=0), "message": ref("ChatCompletionMessage"), "finish_reason": FINISH_REASON},
        required=("index", "message", "finish_reason"),
    ),
    "ChatCompletion": obj(
        {
            "id": string("chatcmpl-...; the same on a replay of an Idempotency-Key.", pattern="^chatcmpl-"),
            "object": literal("chat.completion"),
            "created": integer("Unix seconds."),
            "model": string("The agent's slug, as sent."),
            "choices": array(ref("ChatCompletionChoice"), minItems=1, maxItems=1),
            "usage": ref("ChatCompletionUsage"),
        },
        required=("id", "object", "created", "model", "choices", "usage"),
    ),
    "ChatToolCallDelta": obj(
        {
            "index": integer("The call's position among this turn's calls.", minimum=0),
            "id": string("In the call's first delta."),
            "type": literal("function"),
            "function": obj({"name": string("In the call's first delta."),
                             "arguments": string("A piece of the JSON-encoded arguments.")}),
        },
        required=("index",),
    ),
    "ChatCompletionDelta": obj(
        {
            "role": literal("assistant", "In the first chunk only."),
            "content": nullable(string("The next piece of the reply.")),
            "tool_calls": array(ref("ChatToolCallDelta")),
        },
    ),
    "ChatCompletionChunkChoice": obj(
        {"index": integer("Always 0: one choice.", minimum=0, maximum=0), "delta": ref("ChatCompletionDelta"), "finish_reason": nullable(FINISH_REASON)},
        required=("index", "delta", "finish_reason"),
    ),
    "ChatCompletionChunk": obj(
        {
            "id": string(pattern="^chatcmpl-"),
            "object": literal("chat.completion.chunk"),
            "created": integer(),
            "model": string(),
            "choices": array(ref("ChatCompletionChunkChoice"), "Empty in the usage chunk.", maxItems=1),
            "usage": nullable(ref("ChatCompletionUsage")),
        },
        required=("id", "object", "created", "model", "choices"),
    ),
    "ChatCompletionStreamEvent": described(
        {"oneOf": [ref("ChatCompletionChunk"), ref("OpenAIError")]},
        "The JSON of one `data:` line of the stream: a chunk, or an error that ends it (the run failed or was "
        "aborted, the stream was lost, or the server is restarting).",
    ),
}

CHAT_STREAM_DESCRIPTION = (
    "With `stream: true`: Server-Sent Events, each `data: <JSON>` followed by a blank line. The first chunk "
    "carries `delta.role`; text arrives as `delta.content`, client tool calls as `delta.tool_calls` (id and name "
    "first, then pieces of the arguments); the last choice chunk has `finish_reason`; with "
    "`stream_options.include_usage` a chunk with empty `choices` and `usage` follows. An error that ends the "
    "stream is an event of its own (`{\"error\": ...}`). The stream always ends with `data: [DONE]`. Lines "
    "starting with `:` are keep-alive comments."
)

_UUID = {"type": "string", "format": "uuid"}
RUN_HEADERS = {
    "X-Run-Id": {"description": "The run that produced this answer: GET /api/runs/{id}/, its events at "
                                "/api/runs/{id}/events/.", "schema": _UUID},
    "X-Session-Id": {"description": "The agent session the run belongs to (/api/sessions/{id}/).", "schema": _UUID},
}
CHAT_HEADERS = {
    **RUN_HEADERS,
    "X-Session-Key": {"description": "The session's key, e.g. `agent:<model>:<user>`.", "schema": {"type": "string"}},
    "X-Session-History": {
        "description": "Where the conversation the model saw came from: `request` (an ephemeral session made of the "
                       "request's messages), `seeded` (a new persistent session, started from the request's earlier "
                       "messages) or `server` (an existing session: the server's transcript is authoritative and "
                       "the request's earlier messages were not used).",
        "schema": {"type": "string", "enum": ["request", "seeded", "server"]},
    },
}

SESSION_KEY_HEADER = header("X-Session-Key", "A session name: the conversation is the agent's persistent session "
                                             "`agent:<model>:<name>` (on chat completions as `user`, and taking "
                                             "precedence over it).")
SESSION_MODE_HEADER = header(
    "X-Session-Mode", "`stateless`: the request's messages are the whole conversation (an ephemeral session whose key "
                      "starts with the persistent one's, for auditing), even with a session name. `persistent` is the "
                      "default.", {"type": "string", "enum": ["persistent", "stateless"]},
)
QUEUE_MODE_HEADER = header(
    "X-Queue-Mode", "What to do when the session already has a run: followup (run after it), collect (batch), steer "
                    "(inject at its next step), interrupt (abort it).",
    {"type": "string", "enum": list(AgentSession.QueueMode.values)},
)
IDEMPOTENCY_HEADER = header(
    "Idempotency-Key", "A repeat of the same request with the same key returns the first one's run (and id) instead "
                       "of starting another; another request with it is a 409.", {"type": "string", "maxLength": 255},
)

# --- the Responses API ---------------------------------------------------------------------------------


def only_null(description: str) -> dict:
    """A parameter the gateway takes only when it is null (or left out)."""
    return {"nullable": True, "enum": [None], "description": description}


RESPONSES_INPUT_SCHEMAS = {
    "ResponseInputText": obj({"type": literal("input_text"), "text": string()}, required=("type", "text")),
    "ResponseInputImage": obj(
        {
            "type": literal("input_image"),
            "image_url": string("An http(s) URL or a data URL (uploaded files, `file_id`, are not supported).",
                                minLength=1),
            "detail": string(enum=["auto", "low", "high"]),
        },
        required=("type", "image_url"),
    ),
    "ResponseOutputText": obj(
        {"type": literal("output_text"), "text": string(), "annotations": array(json_object("Always empty."))},
        required=("type", "text"),
    ),
    "ResponseRefusal": obj({"type": literal("refusal"), "refusal": string()}, required=("type", "refusal"),
                           description="Read as text."),
    "ResponseContentPart": described(
        tagged_union("type", {
            "input_text": "ResponseInputText", "input_image": "ResponseInputImage",
            "output_text": "ResponseOutputText", "refusal": "ResponseRefusal", "text": "ChatTextPart",
            "image_url": "ChatImageUrlPart", "image": "ChatImagePart",
        }),
        "A part of a message's content; the Chat Completions parts (text, image_url) and the Messages API's "
        "image are understood too.",
    ),
    "ResponseInputMessage": obj(
        {
            "type": literal("message"),
            "role": string("system and developer messages are added to the agent's system prompt.",
                           enum=["user", "assistant", "system", "developer"]),
            "content": {"oneOf": [{"type": "string"}, array(ref("ResponseContentPart"))]},
            "id": string(),
            "status": string(),
        },
        required=("role", "content"),
        description="A message; `type` may be left out. With previous_response_id only user messages are taken "
                    "(the stored conversation holds the rest).",
    ),
    "ResponseFunctionCall": obj(
        {
            "type": literal("function_call"),
            "id": string("fc_<call_id> in the gateway's output."),
            "call_id": string("The id the function_call_output answering it carries.", minLength=1, maxLength=64),
            "name": TOOL_NAME,
            "arguments": string("The arguments, JSON-encoded (an object)."),
            "status": string(enum=["in_progress", "completed", "incomplete"]),
        },
        required=("type", "call_id", "name", "arguments"),
        description="A call of one of the client's tools.",
    ),
    "ResponseFunctionCallOutput": obj(
        {
            "type": literal("function_call_output"),
            "call_id": string("The call this answers.", minLength=1),
            "output": described(
                {"oneOf": [{"type": "string"}, array(ref("ResponseContentPart"))]}, "The call's result: text only.",
            ),
            "id": string(),
            "status": string(),
        },
        required=("type", "call_id", "output"),
        description="The result of one of the client's tool calls.",
    ),
    "ResponseInputItem": described(
        {"oneOf": [ref("ResponseInputMessage"), ref("ResponseFunctionCall"), ref("ResponseFunctionCallOutput")]},
        "A message, an earlier function call (history; not with previous_response_id), or a call's output.",
    ),
}

RESPONSES_TOOL_SCHEMAS = {
    "ResponseFunctionTool": obj(
        {
            "type": literal("function"),
            "name": TOOL_NAME,
            "description": nullable(string()),
            "parameters": nullable(TOOL_PARAMETERS),
            "strict": nullable(boolean("Echoed back; the arguments are not held to the schema.")),
        },
        required=("type", "name"),
        description="A client-side function (flat, as the Responses API has it): offered beside the agent's own "
                    "tools; a call to it ends the response with a function_call output item.",
    ),
    "ResponseNamedToolChoice": obj({"type": literal("function"), "name": TOOL_NAME}, required=("type", "name")),
    "ResponseToolChoice": {"oneOf": [string(enum=["auto", "none", "required"]), ref("ResponseNamedToolChoice")]},
    "ResponseTextFormatJsonSchema": described(
        _json_schema_format(flat=True),
        "The reply is JSON satisfying `schema` (validated; one repair attempt, then an error).",
    ),
    "ResponseTextFormat": tagged_union("type", {
        "text": "ResponseFormatText", "json_object": "ResponseFormatJsonObject",
        "json_schema": "ResponseTextFormatJsonSchema",
    }),
    "ResponseTextConfig": obj(
        {"format": ref("ResponseTextFormat"), "verbosity": nullable(string("Only medium.", enum=["medium"]))},
        closed=True,
    ),
    "ResponseReasoning": obj(
        {"effort": nullable(EFFORT),
         "summary": only_null("Reasoning summaries are not available.")},
        closed=True,
    ),
}

IDENTIFIER = "An identifier for the caller's own bookkeeping: accepted and not used."
RESPONSE_REQUEST = obj(
    {
        "model": MODEL_FIELD,
        "input": described(
            {"oneOf": [string(minLength=1), array(ref("ResponseInputItem"), minItems=1)]},
            "A user message as a string, or items: messages, the client's function calls and their outputs. It "
            "ends with a user message or function_call_output items.",
        ),
        "instructions": nullable(string("Added to the agent's own system prompt.")),
        "previous_response_id": nullable(string(
            "Continue the conversation of that response, which must be its latest: `input` holds only what is new "
            "(user messages, function_call_output items). Not together with X-Session-Key.", pattern="^resp_")),
        "stream": nullable(boolean("Answer as Server-Sent Events (response.created ... response.completed).")),
        "stream_options": nullable(json_object("Accepted and not used.")),
        "tools": array(ref("ResponseFunctionTool"), maxItems=128),
        "tool_choice": ref("ResponseToolChoice"),
        "parallel_tool_calls": nullable(boolean("false: at most one tool call per model turn.")),
        "text": nullable(ref("ResponseTextConfig")),
        "reasoning": nullable(ref("ResponseReasoning")),
        "max_output_tokens": nullable(integer("Capped by the agent's own max_tokens.", minimum=1)),
        "temperature": nullable(number(minimum=0, maximum=2)),
        "top_p": nullable(number(minimum=0, maximum=1)),
        "metadata": nullable(obj({}, description="Echoed back in the response: at most 16 string values.",
                                 maxProperties=16, additionalProperties={"type": "string", "maxLength": 512})),
        "store": nullable(boolean("Everything is stored: a response can always be retrieved.")),
        "truncation": nullable(string(enum=["auto", "disabled"])),
        "user": string(IDENTIFIER),
        "safety_identifier": string(IDENTIFIER),
        "prompt_cache_key": string(IDENTIFIER),
        "background": nullable(boolean("Only false is accepted: a response runs while its request is open.")),
        "include": nullable(array(string(), "Only empty: no extra output data is available.", maxItems=0)),
        "top_logprobs": nullable(integer("Only 0: log probabilities are not available.", minimum=0, maximum=0)),
        "service_tier": nullable(string("There is one service tier.", enum=["auto", "default"])),
        "prompt_cache_retention": nullable(string(ACCEPTED_HINT, enum=["in_memory", "24h"])),
        "conversation": only_null("Not supported: continue a conversation with previous_response_id."),
        "prompt": only_null("Stored prompts are not supported: send instructions and input."),
        "max_tool_calls": only_null("Not supported: the agent's step cap limits its tool calls."),
    },
    required=("model", "input"),
    closed=True,
    description="OpenAI's Responses API request, as far as the gateway serves it. A new conversation is a "
                "persistent session of its own, which later requests continue with previous_response_id.",
)

RESPONSE_OBJECT_SCHEMAS = {
    "ResponseOutputMessage": obj(
        {
            "type": literal("message"),
            "id": string("msg_..."),
            "status": string(enum=["in_progress", "completed", "incomplete"]),
            "role": literal("assistant"),
            "content": array(ref("ResponseOutputText"), "Empty while in progress."),
        },
        required=("type", "id", "status", "role", "content"),
    ),
    "ResponseOutputItem": tagged_union("type", {"message": "ResponseOutputMessage", "function_call": "ResponseFunctionCall"}),
    "ResponseUsage": obj(
        {
            "input_tokens": integer(minimum=0),
            "output_tokens": integer(minimum=0),
            "total_tokens": integer(minimum=0),
            "input_tokens_details": obj({"cached_tokens": integer(minimum=0)}),
            "output_tokens_details": obj({"reasoning_tokens": integer(minimum=0)}),
        },
        required=("input_tokens", "output_tokens", "total_tokens"),
        description="Tokens of the whole run: every model call it made, the agent's own tool steps included.",
    ),
    "ResponseError": obj(
        {"code": string("e.g. server_error, rate_limit_exceeded, aborted."), "message": string(),
         "type": nullable(string("The run's own error code, e.g. overloaded."))},
        required=("code", "message"),
    ),
    "Response": obj(
        {
            "id": string("resp_...: what previous_response_id and GET /v1/responses/{id} take.", pattern="^resp_"),
            "object": literal("response"),
            "created_at": integer("Unix seconds."),
            "status": string(enum=["completed", "incomplete", "failed", "cancelled", "queued", "in_progress"]),
            "model": string("The agent's slug."),
            "output": array(ref("ResponseOutputItem"),
                            "The reply: a message with the result text, then a function_call per client tool call."),
            "output_text": string("The text of the output's message."),
            "usage": nullable(ref("ResponseUsage")),
            "error": nullable(ref("ResponseError")),
            "incomplete_details": nullable(obj({"reason": string(enum=["max_output_tokens"])})),
            "instructions": nullable(string()),
            "metadata": obj({}, additionalProperties={"type": "string"}),
            "previous_response_id": nullable(string()),
            "tools": array(ref("ResponseFunctionTool")),
            "tool_choice": ref("ResponseToolChoice"),
            "parallel_tool_calls": boolean(),
            "temperature": nullable(number()),
            "top_p": nullable(number()),
            "max_output_tokens": nullable(integer()),
            "reasoning": nullable(obj({"effort": nullable(EFFORT), "summary": only_null("Always null.")})),
            "text": obj({"format": ref("ResponseTextFormat")}),
            "truncation": string(enum=["auto", "disabled"]),
            "store": boolean(),
            "background": boolean("Always false."),
            "user": nullable(string()),
            "safety_identifier": nullable(string()),
            "prompt_cache_key": nullable(string()),
        },
        required=("id", "object", "created_at", "status", "model", "output"),
        description="A response: one run of the agent. `status` failed or cancelled comes with `error`; a "
                    "non-streaming request whose run fails gets an HTTP error instead.",
    ),
}


def _stream_event(kind: str, properties: dict, required=()) -> dict:
    return obj(
        {"type": literal(kind), "sequence_number": integer("From 0, one more per event.", minimum=0), **properties},
        required=("type", "sequence_number", *required),
    )


def _response_event(kind: str) -> dict:
    return _stream_event(kind, {"response": ref("Response")}, ("response",))


_TEXT_POSITION = {"item_id": string(), "output_index": integer(minimum=0), "content_index": integer(minimum=0)}
_LOGPROBS = array(json_object("Always empty."))
RESPONSE_STREAM_EVENTS = {
    "ResponseCreatedEvent": _response_event("response.created"),
    "ResponseInProgressEvent": _response_event("response.in_progress"),
    "ResponseOutputItemAddedEvent": _stream_event(
        "response.output_item.added", {"output_index": integer(minimum=0), "item": ref("ResponseOutputItem")},
        ("output_index", "item"),
    ),
    "ResponseContentPartAddedEvent": _stream_event(
        "response.content_part.added", {**_TEXT_POSITION, "part": ref("ResponseOutputText")},
        (*_TEXT_POSITION, "part"),
    ),
    "ResponseOutputTextDeltaEvent": _stream_event(
        "response.output_text.delta", {**_TEXT_POSITION, "delta": string(), "logprobs": _LOGPROBS},
        (*_TEXT_POSITION, "delta"),
    ),
    "ResponseOutputTextDoneEvent": _stream_event(
        "response.output_text.done", {**_TEXT_POSITION, "text": string(), "logprobs": _LOGPROBS},
        (*_TEXT_POSITION, "text"),
    ),
    "ResponseContentPartDoneEvent": _stream_event(
        "response.content_part.done", {**_TEXT_POSITION, "part": ref("ResponseOutputText")},
        (*_TEXT_POSITION, "part"),
    ),
    "ResponseFunctionCallArgumentsDeltaEvent": _stream_event(
        "response.function_call_arguments.delta",
        {"item_id": string(), "output_index": integer(minimum=0), "delta": string()},
        ("item_id", "output_index", "delta"),
    ),
    "ResponseFunctionCallArgumentsDoneEvent": _stream_event(
        "response.function_call_arguments.done",
        {"item_id": string(), "output_index": integer(minimum=0), "name": string(), "arguments": string()},
        ("item_id", "output_index", "arguments"),
    ),
    "ResponseOutputItemDoneEvent": _stream_event(
        "response.output_item.done", {"output_index": integer(minimum=0), "item": ref("ResponseOutputItem")},
        ("output_index", "item"),
    ),
    "ResponseCompletedEvent": _response_event("response.completed"),
    "ResponseIncompleteEvent": _response_event("response.incomplete"),
    "ResponseFailedEvent": _response_event("response.failed"),
    "ResponseErrorEvent": _stream_event(
        "error",
        {"code": nullable(string("e.g. stream_lost, timeout, server_restarting.")), "message": string(),
         "param": nullable(string())},
        ("message",),
    ),
}
RESPONSE_STREAM_SCHEMAS = {
    **RESPONSE_STREAM_EVENTS,
    "ResponseStreamEvent": tagged_union(
        "type", {event["properties"]["type"]["enum"][0]: name for name, event in RESPONSE_STREAM_EVENTS.items()},
        "The JSON of one event of the stream; its SSE `event:` is the same as `type`.",
    ),
}

RESPONSE_STREAM_DESCRIPTION = (
    "With `stream: true`: Server-Sent Events, each `event: <type>` and `data: <JSON>`: response.created and "
    "response.in_progress; the message item (response.output_item.added, response.content_part.added, its text "
    "as response.output_text.delta, then the matching .done events); for each client tool call "
    "response.output_item.added, response.function_call_arguments.delta and .done, response.output_item.done; "
    "finally response.completed (response.incomplete when max_output_tokens cut it, response.failed when the "
    "run failed or was aborted), or an `error` event that ends the stream. Lines starting with `:` are "
    "keep-alive comments."
)

# --- the document --------------------------------------------------------------------------------------

SCHEMAS = {
    **ERROR_SCHEMAS, **MODEL_SCHEMAS, **CONTENT_SCHEMAS, **TOOL_CALL_SCHEMAS, **MESSAGE_SCHEMAS, **TOOL_SCHEMAS,
    **RESPONSE_FORMAT_SCHEMAS, "ChatCompletionRequest": CHAT_REQUEST, **CHAT_RESPONSE_SCHEMAS,
    **RESPONSES_INPUT_SCHEMAS, **RESPONSES_TOOL_SCHEMAS, "ResponseCreateRequest": RESPONSE_REQUEST,
    **RESPONSE_OBJECT_SCHEMAS, **RESPONSE_STREAM_SCHEMAS,
}


def _operation(operation_id: str, summary: str, responses: dict, **extra) -> dict:
    return {"operationId": operation_id, "summary": summary, "tags": [TAG], "security": SECURITY,
            "responses": responses, **extra}


def _ok(description: str, schema: str, *, stream: str | None = None, description_more: str = "", headers=None) -> dict:
    content = {"application/json": {"schema": ref(schema)}}
    if stream:
        content["text/event-stream"] = {"schema": ref(stream)}
    return {"description": description + description_more, "content": content, **({"headers": headers} if headers else {})}


MODEL_PARAMETER = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"},
                   "description": "An agent's slug."}
RESPONSE_ID_PARAMETER = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
                         "description": "A response's id (resp_...)."}

PATHS = {
    "/v1/models": {"get": _operation(
        "openai_models_list", "List the tenant's agents as models",
        {"200": _ok("The agents", "OpenAIModelList"), **error_responses("401", "403", "429")},
    )},
    "/v1/models/{model}": {"get": _operation(
        "openai_models_retrieve", "One agent as a model",
        {"200": _ok("The agent", "OpenAIModel"), **error_responses("401", "403", "404", "429")},
        parameters=[MODEL_PARAMETER],
    )},
    "/v1/chat/completions": {"post": _operation(
        "openai_chat_completions_create", "Run the agent on a conversation (OpenAI Chat Completions)",
        {
            "200": _ok("The reply: a chat.completion, or with `stream: true` a stream of chunks. ",
                       "ChatCompletion", stream="ChatCompletionStreamEvent",
                       description_more=CHAT_STREAM_DESCRIPTION, headers=CHAT_HEADERS),
            **error_responses("400", "401", "403", "404", "409", "413", "429", "502", "503", "504"),
        },
        description="`model` is an agent's slug. The agent runs with its own tools on the server, invisibly to the "
                    "client; the client's `tools` are offered beside them, and a call to one ends the run with "
                    "finish_reason `tool_calls`. Sessions: see `user`, X-Session-Key and X-Session-Mode.",
        parameters=[SESSION_KEY_HEADER, SESSION_MODE_HEADER, QUEUE_MODE_HEADER, IDEMPOTENCY_HEADER],
        requestBody=json_body("ChatCompletionRequest"),
    )},
    "/v1/responses": {"post": _operation(
        "openai_responses_create", "Run the agent on an input (OpenAI Responses API)",
        {
            "200": _ok("The response object, or with `stream: true` a stream of events. ", "Response",
                       stream="ResponseStreamEvent", description_more=RESPONSE_STREAM_DESCRIPTION, headers=RUN_HEADERS),
            **error_responses("400", "401", "403", "404", "409", "413", "429", "502", "503", "504"),
        },
        description="The same engine as chat completions. Without previous_response_id a request starts a "
                    "conversation of its own (a persistent session), with it continues that response's; "
                    "X-Session-Key names a session instead. Client tools and JSON mode (`text.format`) as on chat "
                    "completions. A response can be read back later with GET /v1/responses/{id}.",
        parameters=[SESSION_KEY_HEADER, QUEUE_MODE_HEADER, IDEMPOTENCY_HEADER],
        requestBody=json_body("ResponseCreateRequest"),
    )},
    "/v1/responses/{id}": {"get": _operation(
        "openai_responses_retrieve", "A response by id",
        {"200": _ok("The response object", "Response"), **error_responses("401", "403", "404", "429")},
        parameters=[RESPONSE_ID_PARAMETER],
    )},
}

TAG_DESCRIPTION = {
    "name": TAG,
    "description": "The OpenAI-compatible API: works with OpenAI's own clients pointed at `<gateway>/v1`. Errors "
                   "have OpenAI's shape, `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`.",
}


def add_openai_paths(result, generator, request, public):
    """drf-spectacular postprocessing hook: the /v1 paths and their components."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    clashes = sorted(set(SCHEMAS) & set(schemas))
    if clashes:
        raise ValueError(f"OpenAPI components defined twice (a DRF serializer and sessions/openai_schema.py): {clashes}")
    schemas.update(SCHEMAS)
    result["paths"].update(PATHS)
    result.setdefault("tags", []).append(TAG_DESCRIPTION)
    return result
