"""CloudEvents over HTTP: structured JSON mode and binary mode, into one value."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from pydantic import ValidationError

from bridge.api.models import StructuredEvent
from bridge.api.problems import Problem

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"
HEADER_PREFIX = "ce-"
EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` → ``application/json``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_request(
    content_type: str | None, headers: Mapping[str, str], body: bytes
) -> StructuredEvent:
    """The CloudEvent in a request: structured mode by content type, else binary mode.

    ``application/json`` with a ``ce-specversion`` header is binary mode (the body
    is the data); without it the body is read as a structured event.
    """
    kind = media_type(content_type)
    if kind == STRUCTURED:
        return parse_structured(body)
    if kind == BATCH:
        raise Problem(415, "unsupported-media-type", "batched mode is not supported")
    if "ce-specversion" in headers and (kind == JSON or kind.endswith("+json")):
        return parse_binary(headers, body, kind)
    if kind == JSON:
        return parse_structured(body)
    raise Problem(
        415,
        "unsupported-media-type",
        f"send {STRUCTURED} (structured mode) or {JSON} with ce-* headers (binary mode)",
    )


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, "malformed-json", f"the body is not valid JSON: {exc}") from exc


def parse_structured(body: bytes) -> StructuredEvent:
    """A structured-mode CloudEvent (JSON object with attributes and ``data``)."""
    raw = _json(body)
    if not isinstance(raw, dict):
        raise Problem(422, "validation-error", "a structured CloudEvent is a JSON object")
    if "data_base64" in raw:
        raise Problem(422, "validation-error", "data_base64 is not supported: send JSON data")
    return _validate(raw, "body")


def parse_binary(headers: Mapping[str, str], body: bytes, kind: str = JSON) -> StructuredEvent:
    """A binary-mode CloudEvent: attributes in ``ce-*`` headers, the body is the data."""
    raw: dict[str, Any] = {}
    for name, value in headers.items():
        lname = name.lower()
        if lname.startswith(HEADER_PREFIX) and len(lname) > len(HEADER_PREFIX):
            raw[lname[len(HEADER_PREFIX) :]] = unquote(value)
    raw["datacontenttype"] = kind
    raw["data"] = _json(body)
    return _validate(raw, "header")


def _validate(raw: dict[str, Any], where: str) -> StructuredEvent:
    try:
        event = StructuredEvent.model_validate(raw)
    except ValidationError as exc:
        errors = [
            {"loc": [where, *(str(p) for p in e["loc"])], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        first = errors[0]
        raise Problem(
            422,
            "validation-error",
            f"{'.'.join(first['loc'][1:]) or where}: {first['msg']}",
            errors=errors,
        ) from exc
    extensions(event)
    return event


def extensions(event: StructuredEvent) -> dict[str, str]:
    """Extension attributes as header values; names and values are checked."""
    out: dict[str, str] = {}
    for name, value in (event.model_extra or {}).items():
        if not EXTENSION_NAME.match(name):
            raise Problem(
                422,
                "validation-error",
                f"extension attribute {name!r}: names are 1-20 lower-case letters or digits",
            )
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[name] = str(value)
        else:
            raise Problem(422, "validation-error", f"extension attribute {name!r} must be a string")
    return out
