"""The management API's OpenAPI 3.1 document, served at ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

from collectors.links._model import (
    MAX_CLICKS_LIMIT,
    MAX_RULE_LANGUAGES,
    MAX_RULES,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_TEXT_LENGTH,
    MAX_URL_LENGTH,
)

__all__ = ["OPENAPI"]

_TIME = {
    "type": ["string", "null"],
    "format": "date-time",
    "description": "with a UTC offset; from 1970-01-01T00:00:00Z to 2299-12-31T23:59:59Z",
}
_URL = {
    "type": "string",
    "format": "uri",
    "maxLength": MAX_URL_LENGTH,
    "description": "absolute http or https URL, ASCII, port 1-65535; a #fragment stays last",
}
_TEXT = {"type": "string", "maxLength": MAX_TEXT_LENGTH}

_RULE = {
    "type": "object",
    "required": ["target"],
    "additionalProperties": False,
    "properties": {
        "target": _URL,
        "devices": {
            "type": "array",
            "uniqueItems": True,
            "items": {"enum": ["mobile", "tablet", "desktop"]},
        },
        "os": {
            "type": "array",
            "uniqueItems": True,
            "items": {"enum": ["ios", "android", "windows", "macos", "linux", "chromeos"]},
        },
        "languages": {
            "type": "array",
            "maxItems": MAX_RULE_LANGUAGES,
            "items": {"type": "string", "pattern": "^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})?$"},
            "description": "language tags such as fr or pt-br",
        },
    },
}

_LINK_FIELDS: dict[str, Any] = {
    "slug": {
        "type": "string",
        "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        "maxLength": 64,
        "description": "generated (7 random base62 characters) when left out; api, healthz, readyz and metrics are reserved",
    },
    "target": _URL,
    "status_code": {"enum": [301, 302, 307, 308], "default": 302},
    "tags": {
        "type": "array",
        "maxItems": MAX_TAGS,
        "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_LENGTH},
    },
    "campaign": _TEXT,
    "channel": {"type": "string", "pattern": "^([a-z][a-z0-9_]{0,31})?$"},
    "utm": {
        "type": "object",
        "additionalProperties": False,
        "properties": {k: _TEXT for k in ("source", "medium", "campaign", "term", "content")},
    },
    "forward_query": {"type": "boolean", "default": True},
    "valid_since": _TIME,
    "valid_until": _TIME,
    "fallback_url": {
        "anyOf": [_URL, {"const": ""}, {"type": "null"}],
        "description": "where disabled, expired or exhausted clicks go; null or empty for none",
    },
    "max_clicks": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_CLICKS_LIMIT},
    "disabled": {"type": "boolean", "default": False},
    "rules": {
        "type": "array",
        "maxItems": MAX_RULES,
        "items": _RULE,
        "description": "first match wins",
    },
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
    "400": _answer("invalid link or body; errors name each field", _ERROR),
    "404": _answer("no link with this slug", _ERROR),
    "408": _answer("the body did not arrive in time", _ERROR),
    "413": _answer("body larger than 64 KiB", _ERROR),
    "415": _answer("a Content-Encoding Tracker does not read", _ERROR),
    "403": _answer("no TRACKER_API_TOKEN is configured, so writes are refused", _ERROR),
    "503": _answer("Kafka did not take the change; see Retry-After", _ERROR),
}
_SLUG = [{"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}]
_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"type": "object", "properties": _LINK_FIELDS}}},
}

_PAGE = {"text/html": {"schema": {"type": "string", "minLength": 1}}}
_STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
_OPEN: list[dict[str, list[str]]] = [{}]  # no token needed
# What anyone may call: the redirect, the service's health and this document.
_PUBLIC_PATHS: dict[str, Any] = {
    "/{slug}": {
        "parameters": _SLUG,
        "get": {
            "summary": "Follow a short link (HEAD too): a redirect, counted as a click",
            "security": _OPEN,
            "responses": {
                "301": {"description": "redirect (the link's status_code)"},
                "302": {"description": "redirect (the link's status_code)"},
                "307": {"description": "redirect (the link's status_code)"},
                "308": {"description": "redirect (the link's status_code)"},
                "404": {"description": "no such link", "content": _PAGE},
                "410": {"description": "disabled, expired or exhausted", "content": _PAGE},
                "503": {
                    "description": "links are still loading; see Retry-After",
                    "content": _PAGE,
                },
            },
        },
    },
    "/api/openapi.json": {
        "get": {
            "summary": "This document",
            "security": _OPEN,
            "responses": {"200": _answer("the OpenAPI document", {"type": "object"})},
        }
    },
    "/healthz": {
        "get": {
            "summary": "The process answers",
            "security": _OPEN,
            "responses": {"200": _answer("alive", _STATUS)},
        }
    },
    "/readyz": {
        "get": {
            "summary": "The links are loaded from Kafka",
            "security": _OPEN,
            "responses": {
                "200": _answer("ready", _STATUS),
                "503": _answer("not ready; reasons says why", _STATUS),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics",
            "security": _OPEN,
            "responses": {"200": {"description": "the exposition", "content": {"text/plain": {}}}},
        }
    },
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
                "responses": {
                    "200": _answer("the link", _LINK),
                    "404": _answer("no such link", _ERROR),
                    **_ERRORS,
                },
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
                "responses": {
                    "200": {"description": "SVG", "content": {"image/svg+xml": {}}},
                    "404": _answer("no such link", _ERROR),
                    **_ERRORS,
                },
            },
        },
        "/api/links/{slug}/qr.png": {
            "parameters": _SLUG,
            "get": {
                "summary": "QR code of the short URL with ?qr=1, as PNG",
                "responses": {
                    "200": {"description": "PNG", "content": {"image/png": {}}},
                    "404": _answer("no such link", _ERROR),
                    **_ERRORS,
                },
            },
        },
        **_PUBLIC_PATHS,
    },
}
