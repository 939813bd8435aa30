"""JSON from clients, with a nesting limit.

Python's decoder recurses once per nesting level, so `[[[[…]]]]` ten thousand deep raises RecursionError
(not ValueError) and became a 500 wherever a body or a WebSocket frame was parsed. A document that parses
a little under the interpreter's limit is no better: every later recursive walk (validation, the NUL
check, `json.dumps` into a JSONField) can hit it. So client JSON may nest at most MAX_DEPTH levels,
which no real request comes near, and anything deeper is refused as the client's mistake.

Every edge that parses client JSON goes through `loads` (the OpenAI endpoint, the WebSocket consumer,
the NUL check) or through `JSONParser` (DRF, the REST API).
"""

import codecs
import json

from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.utils.json import strict_constant

MAX_DEPTH = 100


class JSONTooDeep(ValueError):
    def __init__(self):
        super().__init__(f"JSON nested deeper than {MAX_DEPTH} levels is not accepted.")


def loads(data, **kwargs):
    """json.loads that raises JSONTooDeep (a ValueError) for documents nested deeper than MAX_DEPTH."""
    try:
        value = json.loads(data, **kwargs)
    except RecursionError:
        raise JSONTooDeep() from None
    if _deeper_than(value, MAX_DEPTH):
        raise JSONTooDeep()
    return value


def _deeper_than(value, limit: int) -> bool:
    # Iterative on purpose: the point is to never recurse on client data.
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser with the nesting limit: too deep is a 400 like any other parse error."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = parsers.get_encoding(parser_context or {})
        try:
            text = codecs.getreader(encoding)(stream).read()
            return loads(text, parse_constant=strict_constant if self.strict else None)
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}")
