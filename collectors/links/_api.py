"""The management API's OpenAPI 3.1 document, served at ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

__all__ = ["OPENAPI"]

_STRINGS = {"type": "array", "items": {"type": "string"}}
_TIME = {"type": ["string", "null"], "format": "date-time"}

_RULE = {
    "type": "object",
    "required": ["target"],
    "additionalProperties": False,
    "properties": {
        "target": {"type": "string", "format": "uri"},
        "devices": {"type": "array", "items": {"enum": ["mobile", "tablet", "desktop"]}},
        "os": {
            "type": "array",
            "items": {"enum": ["ios", "android", "windows", "macos", "linux", "chromeos"]},
        },
        "languages": {**_STRINGS, "description": "language tags such as fr or pt-br"},
    },
}

_LINK_FIELDS: dict[str, Any] = {
    "slug": {
        "type": "string",
        "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        "description": "generated (7 random base62 characters) when left out; api, healthz, readyz and metrics are reserved",
    },
    "target": {"type": "string", "format": "uri", "description": "http or https only"},
    "status_code": {"enum": [301, 302, 307, 308], "default": 302},
    "tags": _STRINGS,
    "campaign": {"type": "string"},
    "channel": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"},
    "utm": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            k: {"type": "string"} for k in ("source", "medium", "campaign", "term", "content")
        },
    },
    "forward_query": {"type": "boolean", "default": True},
    "valid_since": _TIME,
    "valid_until": _TIME,
    "fallback_url": {
        "type": "string",
        "description": "where disabled, expired or exhausted clicks go",
    },
    "max_clicks": {"type": ["integer", "null"], "minimum": 1},
    "disabled": {"type": "boolean", "default": False},
    "rules": {"type": "array", "items": _RULE, "description": "first match wins"},
}

_LINK = {
    "type": "object",
    "properties": {
        **_LINK_FIELDS,
        "short_url": {"type": "string"},
        "clicks": {"type": "integer", "description": "approximate across instances"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "version": {"type": "integer"},
    },
}

_ERROR = {
    "type": "object",
    "properties": {
        "error": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
        "retry_after": {"type": "integer"},
    },
}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "401": _answer("missing or wrong bearer token", _ERROR),
    "429": _answer("rate limited; see Retry-After", _ERROR),
}
_WRITE_ERRORS = {
    **_ERRORS,
    "400": _answer("invalid link; errors name each field", _ERROR),
    "403": _answer("no TRACKER_API_TOKEN is configured, so writes are refused", _ERROR),
    "503": _answer("Kafka did not take the change; see Retry-After", _ERROR),
}
_SLUG = [{"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}]
_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"type": "object", "properties": _LINK_FIELDS}}},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Tracker short links",
        "version": "1",
        "description": "Manage short links. GET|HEAD /{slug} redirects; see docs/links.md.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Link": _LINK, "Error": _ERROR},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/links": {
            "get": {
                "summary": "List links",
                "parameters": [
                    {"name": "tag", "in": "query", "schema": {"type": "string"}},
                    {"name": "campaign", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _answer(
                        "the links",
                        {
                            "type": "object",
                            "properties": {
                                "links": {"type": "array", "items": _LINK},
                                "count": {"type": "integer"},
                            },
                        },
                    ),
                    **_ERRORS,
                },
            },
            "post": {
                "summary": "Create a link",
                "requestBody": {
                    **_BODY,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["target"],
                                "properties": _LINK_FIELDS,
                            }
                        }
                    },
                },
                "responses": {
                    "201": _answer("created", _LINK),
                    "409": _answer("slug taken", _ERROR),
                    **_WRITE_ERRORS,
                },
            },
        },
        "/api/links/{slug}": {
            "parameters": _SLUG,
            "get": {
                "summary": "Read a link",
                "responses": {"200": _answer("the link", _LINK), "404": _answer("no such link")},
            },
            "patch": {
                "summary": 'Change a link: target, UTM, validity, limits, rules; disable with {"disabled": true}',
                "requestBody": _BODY,
                "responses": {"200": _answer("changed", _LINK), **_WRITE_ERRORS},
            },
            "delete": {
                "summary": "Delete a link",
                "responses": {"204": _answer("deleted"), **_WRITE_ERRORS},
            },
        },
        "/api/links/{slug}/qr.svg": {
            "parameters": _SLUG,
            "get": {
                "summary": "QR code of the short URL with ?qr=1, as SVG",
                "responses": {"200": {"description": "SVG", "content": {"image/svg+xml": {}}}},
            },
        },
        "/api/links/{slug}/qr.png": {
            "parameters": _SLUG,
            "get": {
                "summary": "QR code of the short URL with ?qr=1, as PNG",
                "responses": {"200": {"description": "PNG", "content": {"image/png": {}}}},
            },
        },
    },
}
