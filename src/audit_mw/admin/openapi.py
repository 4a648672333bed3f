"""The OpenAPI 3.1 description of the admin routes, served at ``/openapi.json``.

Kept by hand next to the validators it describes (``query.py``): every limit here is the
limit enforced there, and a schemathesis run in the test suite checks every response
against this document.
"""

from __future__ import annotations

from typing import Any, Final

from audit_mw.admin.query import COUNT_CAP, DEFAULT_LIMIT, KINDS, MAX_LIMIT, MAX_VALUE_LENGTH

__all__ = ["openapi_document"]

_PRINTABLE: Final = "^[^\\x00-\\x1f\\x7f]+$"


def _text(description: str, max_length: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length,
            "pattern": _PRINTABLE, "description": description}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


_EVENT_PROPERTIES: Final[dict[str, Any]] = {
    "id": {"type": "integer", "minimum": 1},
    "occurred_at": {"type": "string", "format": "date-time"},
    "kind": {"type": "string"},
    "action": {"type": "string"},
    "schema_name": _nullable("string"),
    "table_name": _nullable("string"),
    "record_id": _nullable("string"),
    "old_values": _nullable("object"),
    "new_values": _nullable("object"),
    "changed_fields": _nullable("array", items={"type": "string"}),
    "app_user_id": _nullable("string"),
    "client_ip": _nullable("string"),
    "request_id": _nullable("string"),
    "user_agent": _nullable("string"),
    "context_extra": _nullable("object"),
    "context_issues": _nullable("array", items={"type": "string"}),
    "db_role": {"type": "string"},
    "application_name": _nullable("string"),
    "client_addr": _nullable("string"),
    "txid": {"type": "string", "description": "transaction id (xid8), as text"},
    "event_id": _nullable("string", format="uuid"),
    "success": _nullable("boolean"),
    "reason": _nullable("string"),
    "resource_type": _nullable("string"),
    "resource_id": _nullable("string"),
    "metadata": _nullable("object"),
}

_ERROR_CODES: Final = ("bad_request", "unauthorized", "forbidden", "not_found",
                       "method_not_allowed", "unavailable", "internal_error")

_SCHEMAS: Final[dict[str, Any]] = {
    "Event": {
        "type": "object",
        "description": "One row of audit.events: every column, timestamps in UTC. Columns "
                       "added by later schema versions appear as further properties.",
        "properties": _EVENT_PROPERTIES,
        "required": ["id", "occurred_at", "kind", "action", "db_role", "txid"],
    },
    "Change": {
        "type": "object",
        "properties": {"old": {}, "new": {}},
        "required": ["old", "new"],
        "additionalProperties": False,
    },
    "HistoryEntry": {
        "allOf": [{"$ref": "#/components/schemas/Event"}, {
            "type": "object",
            "properties": {"changes": {
                "type": "object",
                "description": "field -> old and new value, for each field this step changed",
                "additionalProperties": {"$ref": "#/components/schemas/Change"},
            }},
            "required": ["changes"],
        }],
    },
    "EventPage": {
        "type": "object",
        "properties": {
            "events": {"type": "array", "maxItems": MAX_LIMIT,
                       "items": {"$ref": "#/components/schemas/Event"}},
            "total": {"type": "integer", "minimum": 0, "maximum": COUNT_CAP,
                      "description": f"matches, counted up to {COUNT_CAP}; when there are "
                                     f"more, {COUNT_CAP} and total_exact is false"},
            "total_exact": {"type": "boolean"},
            "page": {"type": "integer", "minimum": 1},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
            "next_cursor": {"type": ["string", "null"],
                            "description": "pass as cursor for the next page; null at the end"},
        },
        "required": ["events", "total", "total_exact", "page", "limit", "next_cursor"],
        "additionalProperties": False,
    },
    "History": {
        "type": "object",
        "properties": {
            "table": {"type": "string"},
            "schema": {"type": ["string", "null"]},
            "record_id": {"type": "string"},
            "history": {"type": "array", "maxItems": MAX_LIMIT,
                        "items": {"$ref": "#/components/schemas/HistoryEntry"}},
            "page": {"type": "integer", "minimum": 1},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
            "next_cursor": {"type": ["string", "null"]},
        },
        "required": ["table", "schema", "record_id", "history", "page", "limit",
                     "next_cursor"],
        "additionalProperties": False,
    },
    "IntegrityStatus": {
        "type": "object",
        "properties": {
            "integrity_installed": {"type": "boolean"},
            "latest_event_id": {"type": ["integer", "null"]},
            "sealed_position": {"type": "integer", "minimum": 0},
            "unsealed_backlog_max": {"type": "integer", "minimum": 0},
            "checkpoint": {"type": ["object", "null"]},
            "last_verification": {"oneOf": [
                {"$ref": "#/components/schemas/VerificationRun"}, {"type": "null"}]},
        },
        "required": ["integrity_installed", "latest_event_id", "sealed_position",
                     "unsealed_backlog_max", "checkpoint", "last_verification"],
        "additionalProperties": False,
    },
    "VerificationRun": {
        "type": "object",
        "description": "The newest run recorded by `audit-mw verify --record`.",
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "started_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": "string", "format": "date-time"},
            "status": {"type": "string", "enum": ["valid", "valid_unanchored", "tampered",
                                                  "unverifiable"]},
            "valid": {"type": "boolean"},
            "anchored": {"type": "boolean"},
            "checked": {"type": "integer", "minimum": 0},
            "unsealed": {"type": "integer", "minimum": 0},
            "checkpoints": {"type": "integer", "minimum": 0},
            "head_position": {"type": "integer", "minimum": 0},
            "anchored_position": {"type": ["integer", "null"]},
            "chain_id": {"type": ["string", "null"], "format": "uuid"},
            "kind": {"type": ["string", "null"]},
            "first_bad_id": {"type": ["integer", "null"]},
            "first_bad_position": {"type": ["integer", "null"]},
            "detail": {"type": "string"},
            "db_role": {"type": "string"},
        },
        "required": ["id", "started_at", "finished_at", "status", "valid", "anchored",
                     "checked", "unsealed", "checkpoints", "head_position",
                     "anchored_position", "chain_id", "kind", "first_bad_id",
                     "first_bad_position", "detail", "db_role"],
        "additionalProperties": False,
    },
    "Error": {
        "type": "object",
        "properties": {
            "error": {"type": "string", "enum": list(_ERROR_CODES)},
            "message": {"type": "string"},
            "parameter": {"type": "string",
                          "description": "the parameter that was wrong (400 only)"},
        },
        "required": ["error", "message"],
        "additionalProperties": False,
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}


_ERRORS: Final = {
    "400": _error("bad input; `parameter` names it"),
    "401": _error("authentication required (the authorize callback said so)"),
    "403": _error("not authorised, or no authorize callback configured"),
    "503": _error("the database is unavailable, too slow, or the access could not be "
                  "recorded"),
}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema}"}}}}, **_ERRORS}


def _query(name: str, schema: dict[str, Any], description: str,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}


_TIMESTAMP: Final = {"type": "string", "format": "date-time", "maxLength": 64}
_CURSOR: Final = _query("cursor", _text("", 512), "next_cursor of the previous page")


def _events_parameters() -> list[dict[str, Any]]:
    return [
        _query("user_id", _text("", 256), "the acting application user"),
        _query("record_id", _text("", MAX_VALUE_LENGTH), "primary key of the changed row"),
        _query("table", _text("", 128), "name of the tracked table"),
        _query("action", _text("", 64), "INSERT, UPDATE, DELETE, TRUNCATE or an event action"),
        _query("kind", {"type": "string", "enum": list(KINDS)}, "kind of event"),
        _query("success", {"type": "boolean"}, "outcome of an application event"),
        _query("request_id", _text("", 128), "the request that caused the event"),
        _query("ip", {"type": "string", "minLength": 1, "maxLength": 64},
               "client IP address, or a network in CIDR form"),
        _query("from", _TIMESTAMP, "occurred at or after (ISO 8601 with a time zone)"),
        _query("to", _TIMESTAMP, "occurred before (ISO 8601 with a time zone)"),
        _query("page", {"type": "integer", "minimum": 1, "maximum": COUNT_CAP},
               f"page number (default 1); page x limit reaches the first {COUNT_CAP} "
               "matches, the cursor goes deeper; not with cursor"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
               f"events per page (default {DEFAULT_LIMIT})"),
        _CURSOR,
    ]


def openapi_document(root_path: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document; ``root_path`` is where the app is mounted."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "audit_mw admin API",
            "version": "1",
            "description": "Query, trace, export and verify the audit trail. Every request is "
                           "authorised by the application; every access is itself audited.",
        },
        "servers": [{"url": root_path or "/"}],
        "paths": {
            "/events": {"get": {
                "operationId": "listEvents",
                "summary": "Events matching all given filters, newest first",
                "parameters": _events_parameters(),
                "responses": _ok("one page of events", "EventPage"),
            }},
            "/events/{id}": {"get": {
                "operationId": "getEvent",
                "summary": "One event",
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 1,
                                           "maximum": 2**63 - 1}}],
                "responses": {**_ok("the event", "Event"),
                              "404": _error("no event with this id")},
            }},
            "/records/{table}/{record_id}": {"get": {
                "operationId": "recordHistory",
                "summary": "One record's whole history, oldest first, with what changed",
                "parameters": [
                    {"name": "table", "in": "path", "required": True,
                     "schema": _text("", 128)},
                    {"name": "record_id", "in": "path", "required": True,
                     "schema": _text("", MAX_VALUE_LENGTH)},
                    _query("schema", _text("", 128), "schema of the table, when names clash"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                           f"entries per page (default {MAX_LIMIT})"),
                    _CURSOR,
                ],
                "responses": {**_ok("the record's history (empty when none)", "History"),
                              "404": _error("no such endpoint (an empty path segment)")},
            }},
            "/export": {"get": {
                "operationId": "exportEvents",
                "summary": "Every event of a time range, streamed, with its chain entry and a "
                           "signed manifest naming the covering checkpoint",
                "parameters": [
                    _query("from", _TIMESTAMP, "occurred at or after", required=True),
                    _query("to", _TIMESTAMP, "occurred before", required=True),
                    _query("format", {"type": "string", "enum": ["ndjson", "csv"]},
                           "file format (default ndjson)"),
                ],
                "responses": {"200": {
                    "description": "the export file, as an attachment; its last line is "
                                   "the manifest",
                    "content": {"application/x-ndjson": {"schema": {"type": "string"}},
                                "text/csv": {"schema": {"type": "string"}}},
                }, **_ERRORS},
            }},
            "/verify": {"get": {
                "operationId": "integrityStatus",
                "summary": "Integrity position: checkpoint, sealed position, backlog bound, last "
                           "recorded verification",
                "responses": _ok("the integrity status", "IntegrityStatus"),
            }},
            "/openapi.json": {"get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "the OpenAPI document", "content": {
                    "application/json": {"schema": {"type": "object"}}}}, **_ERRORS},
            }},
        },
        "components": {"schemas": _SCHEMAS},
    }
