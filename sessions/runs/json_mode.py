"""JSON mode: an OpenAI request's `response_format` (json_object, json_schema), honoured by the engine.

(Being built: see the issue. `response_format_parse` is what the edges call.)
"""

from beamclaw_project.errors import InvalidInput


def response_format_parse(value, *, param: str = "response_format") -> dict | None:
    """The request's response_format as the run param the engine reads (None: plain text). Raises
    InvalidInput naming `param` for a malformed or unsupported one."""
    if value is None:
        return None
    raise InvalidInput(f"{param} is not supported yet.", field=param)
