"""Building event records: who, from where, validation and caps (pure, no database)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import flask
import pytest
from starlette.requests import Request

from audit_mw.context import audit_context
from audit_mw.errors import ConfigurationError
from audit_mw.events._core import (
    EventRecord,
    EventSettings,
    Kind,
    build_record,
    configure_events,
    event_settings,
    request_facts,
)
from audit_mw.events.redaction import DEFAULT_REDACTOR

SCOPE: dict[str, Any] = {
    "type": "http", "method": "POST", "path": "/login", "client": ("203.0.113.7", 5123),
    "headers": [(b"user-agent", b"curl/8.0"), (b"x-request-id", b"req-1"),
                (b"x-forwarded-for", b"198.51.100.1")],
}
ENVIRON: dict[str, Any] = {
    "REQUEST_METHOD": "POST", "REMOTE_ADDR": "::ffff:203.0.113.8", "wsgi.version": (1, 0),
    "HTTP_USER_AGENT": "wsgi-agent", "HTTP_X_REQUEST_ID": "req-2",
    "HTTP_X_FORWARDED_FOR": "198.51.100.1",
}


def record(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "kind": Kind.AUTH, "action": "login", "success": True, "reason": None,
        "actor_id": None, "subject_id": None, "resource_type": None, "resource_id": None,
        "metadata": None, "request": None, "redactor": DEFAULT_REDACTOR, "event_id": None,
    }
    arguments.update(overrides)
    return build_record(**arguments).params


def test_request_objects_of_every_framework() -> None:
    flask_app = flask.Flask(__name__)
    with flask_app.test_request_context(
        "/login", method="POST", headers={"User-Agent": "flask-agent", "X-Request-ID": "req-3"},
        environ_base={"REMOTE_ADDR": "192.0.2.9"},
    ):
        from_flask = request_facts(flask.request)
    cases = [
        (SCOPE, ("203.0.113.7", "curl/8.0", "req-1")),
        (Request(SCOPE), ("203.0.113.7", "curl/8.0", "req-1")),
        (ENVIRON, ("203.0.113.8", "wsgi-agent", "req-2")),
    ]
    for request, expected in cases:
        facts = request_facts(request)
        assert (facts.client_ip, facts.user_agent, facts.request_id) == expected
    assert (from_flask.client_ip, from_flask.user_agent, from_flask.request_id) == (
        "192.0.2.9", "flask-agent", "req-3")


def test_forwarding_headers_are_not_trusted_from_a_request_object() -> None:
    assert request_facts(SCOPE).client_ip == "203.0.113.7"
    assert request_facts(ENVIRON).client_ip == "203.0.113.8"


def test_bad_request_values_are_dropped() -> None:
    facts = request_facts({"type": "http", "client": ("not-an-ip", 1),
                           "headers": [(b"x-request-id", b"bad id;")]})
    assert (facts.client_ip, facts.request_id) == (None, None)
    with pytest.raises(ConfigurationError, match="request must be"):
        request_facts(object())


def test_context_wins_over_the_request_object() -> None:
    with audit_context(user_id="anonymous", client_ip="10.9.9.9", request_id="ctx-id",
                       extra={"tenant": "acme"}):
        params = record(request=SCOPE, subject_id="alice")
    assert params["client_ip"] == "10.9.9.9"
    assert params["request_id"] == "ctx-id"
    assert params["user_agent"] == "curl/8.0"  # the context had none: taken from the request
    assert json.loads(params["context_extra"]) == {"tenant": "acme"}


def test_who_is_the_actor() -> None:
    # A successful login: the user is the subject and, not being anyone yet, the actor.
    with audit_context(user_id="anonymous"):
        assert record(subject_id="alice")["app_user_id"] == "alice"
        # A failure is never attributed to the account it tried.
        failed = record(action="login_failed", success=False, subject_id="alice")
        assert failed["app_user_id"] == "anonymous"
        assert (failed["resource_type"], failed["resource_id"]) == ("user", "alice")
    # An admin granting a role acts on someone else.
    with audit_context(user_id="admin-bob"):
        granted = record(action="role_granted", subject_id="alice")
        assert (granted["app_user_id"], granted["resource_id"]) == ("admin-bob", "alice")
        assert record(actor_id="system", subject_id="alice")["app_user_id"] == "system"
    # No context at all (a script): a failure has no actor.
    assert record(action="login_failed", success=False, subject_id="x")["app_user_id"] is None


def test_values_are_cleaned_redacted_and_capped() -> None:
    params = record(
        subject_id="eve\r\n" + "x" * 400, reason="r" * 600,
        request={**SCOPE, "headers": [(b"user-agent", b"\x1b[31m" + b"a" * 600)]},
        resource_type="t" * 70,
    )
    assert params["resource_id"].startswith("eve\ufffd\ufffd")
    assert len(params["resource_id"]) == 256
    assert len(params["reason"]) == 512
    assert params["user_agent"] == "a" * 512
    assert len(params["resource_type"]) == 64


def test_huge_metadata_is_cut_visibly() -> None:
    params = record(metadata={"blob": "x" * 20000})
    assert list(json.loads(params["metadata"])) == ["[truncated]"]


@pytest.mark.parametrize("action", ["", "Login", "1login", "a b", "x" * 65, "drop;table"])
def test_bad_actions_are_refused(action: str) -> None:
    with pytest.raises(ValueError, match="action"):
        record(action=action)


def test_bad_kinds_and_types_are_refused() -> None:
    with pytest.raises(ValueError, match="data"):
        record(kind="data")
    with pytest.raises(TypeError, match="success"):
        record(success="yes")
    with pytest.raises(TypeError, match="metadata"):
        record(metadata=["a"])
    with pytest.raises(ValueError, match="badly formed"):
        record(event_id="not-a-uuid")


def test_spool_json_round_trip() -> None:
    event_id = uuid.uuid4()
    original = build_record(
        kind="admin", action="config_changed", success=True, reason=None, actor_id="bob",
        subject_id=None, resource_type="setting", resource_id="mfa", metadata={"a": [1]},
        request=None, redactor=DEFAULT_REDACTOR, event_id=event_id,
    )
    line = original.to_json()
    assert "\n" not in line
    assert EventRecord.from_json(line) == original
    for bad in ["[]", "{}", '{"event_id": "x"}', "not json"]:
        with pytest.raises(ValueError):  # noqa: PT011 - several messages, one type
            EventRecord.from_json(bad)


def test_settings() -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        EventSettings(timeout=0)
    custom = EventSettings(spool="/tmp/x.jsonl", timeout=1)  # noqa: S108 - never written
    assert custom.spool is not None
    previous = configure_events(custom)
    try:
        assert event_settings() is custom
    finally:
        configure_events(previous)
    assert event_settings() is previous
