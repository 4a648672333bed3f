"""The audit context: values, binding, nesting, and set_user across tasks and threads."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import threading

import pytest

from audit_mw.context import (
    REQUEST_ID_MAX_LENGTH,
    SETTING_NAMES,
    USER_AGENT_MAX_LENGTH,
    USER_ID_MAX_LENGTH,
    AuditContext,
    audit_context,
    bind,
    current,
    is_valid_request_id,
    reset,
    set_user,
)
from audit_mw.errors import ConfigurationError

EMPTY = AuditContext()


# --- values --------------------------------------------------------------------------


def test_nothing_bound_gives_an_empty_context() -> None:
    assert current() == EMPTY
    assert current().user_id is None
    assert dict(current().extra) == {}


def test_client_ip_is_normalised() -> None:
    assert AuditContext(client_ip="::ffff:192.0.2.1").client_ip == "192.0.2.1"
    assert AuditContext(client_ip="2001:0DB8:0::1").client_ip == "2001:db8::1"
    assert AuditContext(client_ip="192.0.2.1").client_ip == "192.0.2.1"


@pytest.mark.parametrize("value", ["", "localhost", "1.2.3.4:80", "fe80::1%eth0", "01.2.3.4"])
def test_client_ip_must_be_an_address(value: str) -> None:
    with pytest.raises(ValueError, match="client_ip"):
        AuditContext(client_ip=value)


def test_user_id_limits() -> None:
    assert AuditContext(user_id="u" * USER_ID_MAX_LENGTH).user_id == "u" * USER_ID_MAX_LENGTH
    with pytest.raises(ValueError, match="257 characters long; the limit is 256"):
        AuditContext(user_id="u" * (USER_ID_MAX_LENGTH + 1))
    with pytest.raises(ValueError, match="must not be empty"):
        AuditContext(user_id="")
    with pytest.raises(ValueError, match="NUL"):
        AuditContext(user_id="a\x00b")
    with pytest.raises(TypeError, match="not int"):
        AuditContext(user_id=42)  # type: ignore[arg-type]  # wrong type on purpose


def test_request_id_rules() -> None:
    longest = "r" * REQUEST_ID_MAX_LENGTH
    assert AuditContext(request_id=longest).request_id == longest
    for good in ["abc", "0af7651916cd43dd8448eb211c80319c", "a.b_c:d-e/f+g=h@i"]:
        assert is_valid_request_id(good)
        assert AuditContext(request_id=good).request_id == good
    for bad in ["", "a b", "a,b", "a;b", 'a"b', "é", "x\n", "r" * (REQUEST_ID_MAX_LENGTH + 1)]:
        assert not is_valid_request_id(bad)
        with pytest.raises(ValueError, match="request_id"):
            AuditContext(request_id=bad)


def test_user_agent_is_capped_not_rejected() -> None:
    long_agent = "Mozilla/5.0 " + "x" * 1000
    assert AuditContext(user_agent=long_agent).user_agent == long_agent[:USER_AGENT_MAX_LENGTH]
    assert AuditContext(user_agent="").user_agent is None
    assert AuditContext(user_agent="a\x00b").user_agent == "a\ufffdb"


def test_extra_is_a_read_only_copy() -> None:
    source = {"b": "2", "a": "1"}
    context = AuditContext(extra=source)
    source["c"] = "3"
    assert dict(context.extra) == {"a": "1", "b": "2"}
    with pytest.raises(TypeError):
        context.extra["d"] = "4"  # type: ignore[index]  # read-only on purpose


def test_extra_limits() -> None:
    with pytest.raises(ValueError, match="extra has 33 items"):
        AuditContext(extra={str(i): "v" for i in range(33)})
    with pytest.raises(TypeError, match="extra\\['k'\\] must be a str"):
        AuditContext(extra={"k": 1})  # type: ignore[dict-item]  # wrong type on purpose
    with pytest.raises(ValueError, match="extra key must not be empty"):
        AuditContext(extra={"": "v"})


def test_frozen_comparable_and_hashable() -> None:
    one = AuditContext(user_id="alice", extra={"a": "1", "b": "2"})
    same = AuditContext(user_id="alice", extra={"b": "2", "a": "1"})
    other = AuditContext(user_id="alice", extra={"a": "other"})
    assert one == same
    assert hash(one) == hash(same)
    assert one != other
    assert len({one, same, other}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.user_id = "mallory"  # type: ignore[misc]  # frozen on purpose


# --- settings --------------------------------------------------------------------------


def test_settings_carry_every_field() -> None:
    context = AuditContext(
        user_id="alice",
        client_ip="192.0.2.1",
        request_id="req-1",
        user_agent="curl/8",
        extra={"tenant": "acme", "job": "ünïcode"},
    )
    settings = context.settings()
    assert tuple(settings) == SETTING_NAMES
    assert settings == {
        "audit.user_id": "alice",
        "audit.ip_address": "192.0.2.1",
        "audit.request_id": "req-1",
        "audit.user_agent": "curl/8",
        "audit.extra": '{"job":"ünïcode","tenant":"acme"}',
    }
    assert json.loads(settings["audit.extra"]) == {"job": "ünïcode", "tenant": "acme"}


def test_absent_values_are_empty_strings() -> None:
    assert EMPTY.settings() == dict.fromkeys(SETTING_NAMES, "")


def test_settings_are_cached_but_returned_as_copies() -> None:
    context = AuditContext(user_id="alice")
    first = context.settings()
    first["audit.user_id"] = "mallory"
    assert context.settings()["audit.user_id"] == "alice"
    assert context.settings() is not context.settings()
    # The cache is not part of equality.
    assert context == AuditContext(user_id="alice")


def test_setting_values_are_the_settings_in_order_computed_once() -> None:
    context = AuditContext(user_id="alice", request_id="req-1", extra={"b": "2", "a": "1"})
    values = context.setting_values()
    assert values == tuple(context.settings()[name] for name in SETTING_NAMES)
    assert values == ("alice", "", "req-1", "", '{"a":"1","b":"2"}')
    assert context.setting_values() is values
    # A context built from another starts without the other's cache.
    assert dataclasses.replace(context, user_id="bob").setting_values()[0] == "bob"


# --- bind / reset ------------------------------------------------------------------------


def test_bind_and_reset() -> None:
    token = bind(AuditContext(user_id="alice", request_id="r1"))
    try:
        assert current() == AuditContext(user_id="alice", request_id="r1")
        inner = bind(user_id="bob")
        assert current() == AuditContext(user_id="bob", request_id="r1")  # inherits
        reset(inner)
        assert current().user_id == "alice"
        exact = bind(AuditContext(user_id="carol"))
        assert current() == AuditContext(user_id="carol")  # an explicit context is exact
        reset(exact)
    finally:
        reset(token)
    assert current() == EMPTY


def test_audit_context_nests_and_restores() -> None:
    with audit_context(user_id="job:nightly", extra={"job": "billing"}) as outer:
        assert outer == current()
        assert current().user_id == "job:nightly"
        with audit_context(request_id="step-2", extra={"step": "2"}):
            assert current() == AuditContext(
                user_id="job:nightly", request_id="step-2", extra={"job": "billing", "step": "2"}
            )
            with audit_context(user_id=None):
                assert current().user_id is None
                assert current().request_id == "step-2"
        assert current() == outer
    assert current() == EMPTY


def test_audit_context_restores_after_an_exception() -> None:
    with pytest.raises(RuntimeError, match="boom"), audit_context(user_id="job:x"):
        raise RuntimeError("boom")
    assert current() == EMPTY


def test_audit_context_is_single_use_at_a_time() -> None:
    block = audit_context(user_id="a")
    with block, pytest.raises(RuntimeError, match="already active"), block:
        pass
    with block:  # reusable once it has exited
        assert current().user_id == "a"


def test_audit_context_rejects_bad_values_before_binding() -> None:
    with pytest.raises(ValueError, match="user_id"), audit_context(user_id="u" * 300):
        pass
    assert current() == EMPTY


def test_audit_context_holds_across_await() -> None:
    async def job() -> list[str | None]:
        seen = []
        with audit_context(user_id="job:sync-with"):
            await asyncio.sleep(0)
            seen.append(current().user_id)
        async with audit_context(user_id="job:async-with"):
            await asyncio.sleep(0)
            seen.append(current().user_id)
        seen.append(current().user_id)
        return seen

    assert asyncio.run(job()) == ["job:sync-with", "job:async-with", None]


def test_concurrent_tasks_do_not_see_each_other() -> None:
    async def worker(name: str, gate: asyncio.Event, seen: dict[str, str | None]) -> None:
        with audit_context(user_id=name):
            await gate.wait()
            seen[name] = current().user_id

    async def main() -> dict[str, str | None]:
        gate = asyncio.Event()
        seen: dict[str, str | None] = {}
        tasks = [asyncio.create_task(worker(n, gate, seen)) for n in ("a", "b", "c")]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        return seen

    assert asyncio.run(main()) == {"a": "a", "b": "b", "c": "c"}


def test_a_new_thread_starts_empty() -> None:
    # threading.Thread does not copy contextvars: work started there must bind its own.
    seen: list[AuditContext] = []
    with audit_context(user_id="alice"):
        thread = threading.Thread(target=lambda: seen.append(current()))
        thread.start()
        thread.join()
    assert seen == [EMPTY]


# --- set_user ----------------------------------------------------------------------------


def test_set_user_needs_a_bound_context() -> None:
    with pytest.raises(ConfigurationError, match="set_user\\(\\) needs a bound audit context"):
        set_user("alice")


def test_set_user_changes_the_current_block_only() -> None:
    with audit_context(user_id="anonymous", request_id="r1"):
        assert set_user("alice") == AuditContext(user_id="alice", request_id="r1")
        assert current().user_id == "alice"
        with audit_context(extra={"k": "v"}):
            set_user("bob")
            assert current().user_id == "bob"
        assert current().user_id == "alice"
        with pytest.raises(ValueError, match="user_id"):
            set_user("")
        assert current().user_id == "alice"
    assert current() == EMPTY


def test_set_user_in_a_copied_context_is_seen_by_the_binder() -> None:
    # What Starlette's run_in_threadpool and asyncio.to_thread do: run in a copy.
    with audit_context(user_id="anonymous"):
        contextvars.copy_context().run(set_user, "alice")
        assert current().user_id == "alice"


def test_set_user_in_a_thread_pool_and_a_task_is_seen_by_the_request() -> None:
    async def request() -> list[str | None]:
        seen = []
        with audit_context(user_id="anonymous"):
            await asyncio.to_thread(set_user, "from-thread")
            seen.append(current().user_id)

            async def endpoint() -> None:
                set_user("from-task")

            await asyncio.create_task(endpoint())
            seen.append(current().user_id)
        seen.append(current().user_id)
        return seen

    assert asyncio.run(request()) == ["from-thread", "from-task", None]


def test_set_user_does_not_leak_into_the_next_binding() -> None:
    with audit_context(user_id="anonymous"):
        set_user("alice")
    with audit_context(request_id="next") as fresh:
        assert fresh.user_id is None
        assert current().user_id is None
