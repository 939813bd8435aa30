"""JSON mode: an OpenAI request's `response_format` (json_object, json_schema), honoured by the engine.

A request in JSON mode gets what it asked for or a clear error, never unchecked prose:

- `response_format_parse` (the edges call it) refuses a malformed format with a 400 before any run
  exists: an unknown type, a schema that is not a JSON object, not a valid JSON Schema (for the draft its
  `$schema` names, 2020-12 when none), too large or too deep for a prompt, or with a `$ref` that does not
  resolve inside the schema (nothing is ever fetched). What it returns is the run's
  `params["response_format"]`.
- The model is told (`json_mode_instruction`, at the end of the system prompt): only JSON, no prose, no
  code fence, and the schema itself. Providers get no native response_format: the instruction and the
  check below work on every model and server the same way.
- The reply that ends the run is checked (`reply_check`): surrounding whitespace and one Markdown code
  fence are forgiven, then it must parse as JSON (an object for json_object) and match the schema. A
  reply that calls tools is not checked; only the final one is.
- A reply that fails gets ONE repair: it stays in the transcript, a user message says what was wrong, and
  the run goes on to its next step. `params[REPAIR_PARAM]` records that the repair was used, in the same
  transaction that appends the message, so a step delivered twice cannot repair twice. A second failure
  fails the run with INVALID_JSON, saying what was wrong and what to try.
- A valid reply's JSON, without the fence, is the run's result text (`reply_result_text` finds it again
  from the transcript); the transcript keeps the reply as the model wrote it.
"""

import json
import re
from dataclasses import dataclass

import jsonschema_rs
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from beamclaw_project.errors import InvalidInput

TEXT, JSON_OBJECT, JSON_SCHEMA = "text", "json_object", "json_schema"
TYPES = (TEXT, JSON_OBJECT, JSON_SCHEMA)
# The schema goes into the system prompt of every step: about 16k tokens at most.
MAX_SCHEMA_CHARS = 64_000
# JSON nesting levels (each object or array is one); deep enough for a schema of 30 nested objects.
MAX_SCHEMA_DEPTH = 64
# OpenAI's rule for json_schema.name.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SCHEMA_FIELDS = ("name", "schema", "description", "strict")
# The reply, as a whole, in one Markdown code fence (``` or ```json): the fence is forgiven.
_FENCED = re.compile(r"\A```[\w-]*[ \t]*\n?(.*?)\s*```\Z", re.DOTALL)

REPAIR_PARAM = "json_repair_step"
INVALID_JSON = "invalid_json"


# --- the request ------------------------------------------------------------------------------------


def response_format_parse(value, *, param: str = "response_format") -> dict | None:
    """The request's format as the run param the engine reads: None (plain text), `{"type":
    "json_object"}` or `{"type": "json_schema", "name", "schema", "strict", "description"?}`.

    Takes Chat Completions' shape (`{"type": "json_schema", "json_schema": {"name", "schema", ...}}`) and
    the Responses API's flat one (`text.format`: `{"type": "json_schema", "name", "schema", ...}`), told
    apart by the `json_schema` key. Raises InvalidInput naming `param` for anything it cannot honour."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _refused(f'{param} must be an object such as {{"type": "json_object"}}.', param)
    kind = value.get("type")
    if kind not in TYPES:
        got = f"got {json.dumps(kind)[:60]}" if kind is not None else "it is missing"
        raise _refused(f"{param}.type must be one of {', '.join(TYPES)} ({got}).", param)
    nested = kind == JSON_SCHEMA and "json_schema" in value
    known = ("type",) if kind != JSON_SCHEMA else ("type", "json_schema") if nested else ("type", *_SCHEMA_FIELDS)
    _no_unknown_keys(value, known, where=param, param=param)
    if kind == TEXT:
        return None
    if kind == JSON_OBJECT:
        return {"type": JSON_OBJECT}
    if not nested and not any(key in value for key in _SCHEMA_FIELDS):
        raise _refused(
            f'{param} of type json_schema needs a name and a schema: {{"type": "json_schema", "json_schema": '
            '{"name", "schema", "strict"?, "description"?}} in Chat Completions, {"type": "json_schema", "name", '
            '"schema", "strict"?, "description"?} in the Responses API.', param)
    if nested:
        spec, where = value["json_schema"], f"{param}.json_schema"
        if not isinstance(spec, dict):
            raise _refused(f'{where} must be an object: {{"name", "schema", "strict"?, "description"?}}.', param)
        _no_unknown_keys(spec, _SCHEMA_FIELDS, where=where, param=param)
    else:
        spec, where = value, param
    return _json_schema_parse(spec, where=where, param=param)


def _json_schema_parse(spec: dict, *, where: str, param: str) -> dict:
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _refused(f"{where}.name is required: 1 to 64 letters, digits, underscores or dashes.", param)
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise _refused(f"{where}.description must be a string.", param)
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _refused(f"{where}.strict must be a boolean.", param)
    if "schema" not in spec:
        raise _refused(f"{where}.schema is required: the JSON Schema the reply must match.", param)
    schema = spec["schema"]
    _schema_check(schema, where=f"{where}.schema", param=param)
    parsed = {"type": JSON_SCHEMA, "name": name, "schema": schema, "strict": bool(strict)}
    if description:
        parsed["description"] = description
    return parsed


def _schema_check(schema, *, where: str, param: str) -> None:
    if not isinstance(schema, dict):
        raise _refused(f"{where} must be a JSON object (a JSON Schema), not {_json_kind(schema)}.", param)
    if _deeper_than(schema, MAX_SCHEMA_DEPTH):
        raise _refused(f"{where} nests deeper than {MAX_SCHEMA_DEPTH} levels; flatten it (use $defs and $ref).", param)
    size = len(json.dumps(schema, ensure_ascii=False))
    if size > MAX_SCHEMA_CHARS:
        raise _refused(f"{where} is {size} characters as JSON; at most {MAX_SCHEMA_CHARS} are accepted, "
                       "since the model reads it with every request. Send a smaller schema.", param)
    validator_class = _validator_class(schema)
    if validator_class is None:
        raise _refused(f"{where}.$schema {json.dumps(schema['$schema'])[:200]} is not a JSON Schema draft this gateway "
                       "knows; leave it out (draft 2020-12 is assumed) or name draft 2020-12, 2019-09, 7, 6, 4 or 3.",
                       param)
    try:
        validator_class.check_schema(schema)
    except SchemaError as exc:
        raise _refused(f"{where} is not a valid JSON Schema: {_shorten(exc.message)} (at {exc.json_path}).", param) from None
    ref = _unresolvable_ref(schema)
    if ref is not None:
        raise _refused(f"{where} is not a valid JSON Schema: $ref {json.dumps(ref)[:200]} does not resolve within "
                       "the schema (only references into the schema itself, such as \"#/$defs/Item\", are followed).",
                       param)
    try:
        jsonschema_rs.validator_for(schema)  # what checks the replies (see _problem)
    except ValueError as exc:
        raise _refused(f"{where} cannot be used to check replies: {_shorten(str(exc))}", param) from None


def _validator_class(schema: dict):
    """The validator of the draft the schema's `$schema` names (2020-12 without one); None for a `$schema`
    that names no draft known here."""
    if "$schema" not in schema:
        return Draft202012Validator
    dialect = schema["$schema"]
    return validators.validator_for(schema, default=None) if isinstance(dialect, str) else None


def _unresolvable_ref(schema: dict) -> str | None:
    """The first `$ref` that does not resolve within the schema itself, each resolved as the validator will
    (against the `$id` of the subschema it sits in). The registry holds only this schema and retrieves
    nothing, so a reference to another document never resolves (and is never fetched)."""
    root = Resource.from_contents(schema, default_specification=DRAFT202012)
    stack = [(root, Registry().resolver_with_root(root))]
    while stack:
        resource, resolver = stack.pop()
        ref = resource.contents.get("$ref") if isinstance(resource.contents, dict) else None
        if isinstance(ref, str):
            try:
                resolver.lookup(ref)
            except (Unresolvable, ValueError):  # ValueError: not even a URI
                return ref
        stack.extend((sub, resolver.in_subresource(sub)) for sub in resource.subresources())
    return None


def _no_unknown_keys(value: dict, known: tuple[str, ...], *, where: str, param: str) -> None:
    unknown = sorted(str(key) for key in value if key not in known)
    if unknown:
        raise _refused(f"{where} has unknown field(s) {', '.join(json.dumps(k) for k in unknown[:5])[:200]}; "
                       f"it takes {', '.join(known)}.", param)


def _refused(message: str, param: str) -> InvalidInput:
    return InvalidInput(message, field=param)


# --- the prompt -------------------------------------------------------------------------------------


def json_mode_instruction(response_format: dict | None) -> str:
    """What the system prompt says about the reply's format ("" in text mode). The schema comes last, on
    a line of its own."""
    if not response_format:
        return ""
    rule = ("no text before or after it and no Markdown code fence. This applies to the reply that ends "
            "your turn; tool calls before it are fine.")
    if response_format["type"] == JSON_OBJECT:
        return f"Response format: your final reply must be a single JSON object and nothing else: {rule}"
    name = response_format["name"]
    lines = [f'Response format: your final reply must be {_noun(response_format)} that matches the JSON Schema '
             f'"{name}" below, and nothing else: {rule}']
    if response_format.get("description"):
        lines.append(f'What "{name}" is: {response_format["description"]}')
    lines.append(f'JSON Schema "{name}":\n{json.dumps(response_format["schema"], ensure_ascii=False)}')
    return "\n\n".join(lines)


def _noun(response_format: dict) -> str:
    if response_format["type"] == JSON_OBJECT or response_format["schema"].get("type") == "object":
        return "a single JSON object"
    return "a single JSON value"


# --- the reply --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyCheck:
    """A final reply held to the run's format. `text`: the reply without surrounding whitespace and code
    fence (the run's result when valid); `problem`: what is wrong with it, as the end of a sentence that
    starts with "Your reply" (None: it is valid)."""

    text: str
    problem: str | None
    truncated: bool = False

    @property
    def valid(self) -> bool:
        return self.problem is None


def reply_json_text(text: str) -> str:
    """The reply without surrounding whitespace and, when it is one fenced block as a whole, the fence."""
    text = text.strip()
    fenced = _FENCED.match(text)
    return fenced.group(1).strip() if fenced else text


def reply_result_text(response_format: dict | None, content: list[dict]) -> str:
    """A succeeded run's result text from its final reply's blocks, as its run.completed event has it: in
    JSON mode (and when the reply calls no tools) the JSON without its fence, else the reply's text."""
    text = "".join(block.get("text", "") for block in content if block.get("type") == "text")
    if not response_format or any(block.get("type") == "tool_use" for block in content):
        return text
    return reply_json_text(text)


def reply_check(response_format: dict | None, completion) -> ReplyCheck | None:
    """Check a completion (sessions.providers.base.Completion) against the run's format; None when there is
    nothing to check: text mode, or a reply that calls tools (the run goes on, or its client runs them)."""
    if not response_format or any(block.get("type") == "tool_use" for block in completion.content):
        return None
    text = reply_json_text(completion.text)
    truncated = completion.stop_reason == "max_tokens"
    problem = _problem(response_format, text, truncated)
    return ReplyCheck(text=text, problem=problem, truncated=truncated and problem is not None)


def _problem(response_format: dict, text: str, truncated: bool) -> str | None:
    if not text:
        return "was empty, not JSON"
    try:
        value = json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        cut = " (it was cut off at the max_tokens limit)" if truncated else ""
        return f"was not valid JSON{cut}: {_shorten(str(exc) or 'nested too deeply')}"
    if response_format["type"] == JSON_OBJECT:
        if not isinstance(value, dict):
            return f"was JSON but {_json_kind(value)}, not an object"
        return None
    # The reply is checked by a validator whose regular expressions run in linear time: a tenant writes the
    # schema's `pattern`s and, through its prompt, the reply, and Python's `re` backtracks without limit.
    try:
        error = next(iter(jsonschema_rs.validator_for(response_format["schema"]).iter_errors(value)), None)
    except (ValueError, RecursionError) as exc:
        return f"could not be checked against the schema: {_shorten(str(exc))}"
    if error is None:
        return None
    path = "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.instance_path)
    return f'did not match the JSON Schema "{response_format["name"]}": at {path}, {_shorten(error.message)}'


def repair_prompt(response_format: dict, check: ReplyCheck) -> str:
    """The user message that asks the model, once, for a reply that passes."""
    noun = "JSON object" if _noun(response_format) == "a single JSON object" else "JSON"
    schema = f' matching the JSON Schema "{response_format["name"]}"' if response_format["type"] == JSON_SCHEMA else ""
    shorter = " Keep it short enough to fit." if check.truncated else ""
    return f"Your reply {check.problem}. Reply again with only the {noun}{schema}: no prose, no code fence.{shorter}"


def failure_message(response_format: dict, check: ReplyCheck) -> str:
    """The failed run's error: what was wrong after the repair, and what to try."""
    advice = ("Raise max_tokens, or ask for less." if check.truncated else
              "Try a simpler schema, clearer instructions in the system message, or an agent on a stronger model."
              if response_format["type"] == JSON_SCHEMA else
              "Say what the JSON should hold in the system message, or use an agent on a stronger model.")
    return f"After one repair attempt, the model's reply still {check.problem}. {advice}"


def _not_json(constant: str):
    raise ValueError(f"{constant} is not a JSON value")


def _json_kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    kinds = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}
    return next((kind for cls, kind in kinds.items() if isinstance(value, cls)), type(value).__name__)


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _deeper_than(value, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        if children and depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
