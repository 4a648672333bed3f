"""The story both example apps are driven through, over real HTTP, then checked via /audit."""

from __future__ import annotations

from typing import Any

import httpx
from audit_mw_examples.shop import DEMO_USERS

ALICE, BOB, CAROL = DEMO_USERS
BOB_IP, ALICE_IP = "203.0.113.10", "198.51.100.7"


def _client(base_url: str, ip: str) -> httpx.Client:
    # The apps trust 127.0.0.1 as a proxy in these tests, so the forwarded address counts.
    return httpx.Client(base_url=base_url, headers={"x-forwarded-for": ip}, timeout=30)


def run_story(base_url: str) -> dict[str, Any]:
    """Drive the shop; return what each step's response said (ids, request ids)."""
    seen: dict[str, Any] = {"request_ids": {}}

    def remember(step: str, response: httpx.Response) -> httpx.Response:
        seen["request_ids"][step] = response.headers["x-request-id"]
        return response

    with _client(base_url, BOB_IP) as bob:
        r = remember("bob_bad_login", bob.post("/login", json={"email": BOB.email,
                                                                 "password": "wrong"}))
        assert r.status_code == 401
        r = remember("bob_login", bob.post("/login", json={"email": BOB.email,
                                                             "password": BOB.password}))
        assert r.status_code == 200, r.text
        seen["bob"] = r.json()["user"]
        r = remember("bob_create", bob.post("/orders", json={"item": "widget", "quantity": 2,
                                                              "unit_price": "9.50"}))
        assert r.status_code == 201, r.text
        order_id = r.json()["order"]["id"]
        seen["order_id"] = order_id
        r = remember("bob_update", bob.patch(f"/orders/{order_id}", json={"quantity": 3}))
        assert r.status_code == 200, r.text
        r = remember("bob_cancel", bob.post(f"/orders/{order_id}/cancel"))
        assert r.json()["order"]["status"] == "cancelled"
        r = remember("bob_escalate", bob.post(f"/admin/users/{seen['bob'].split(':')[1]}/role",
                                              json={"role": "admin"}))
        assert r.status_code == 403
        r = bob.get("/audit/events")
        assert r.status_code in (401, 403)
        assert "events" not in r.text
        r = remember("bob_logout", bob.post("/logout"))
        assert r.status_code == 200

    with _client(base_url, ALICE_IP) as alice:
        r = remember("alice_login", alice.post("/login", json={"email": ALICE.email,
                                                                 "password": ALICE.password}))
        assert r.status_code == 200, r.text
        seen["alice"] = r.json()["user"]
        carol_id = _user_id(alice, CAROL.email)
        r = remember("alice_promote", alice.post(f"/admin/users/{carol_id}/role",
                                                 json={"role": "admin"}))
        assert r.status_code == 200, r.text
        seen["carol"] = f"user:{carol_id}"
        seen["events"] = _all_events(alice)
    return seen


def _user_id(client: httpx.Client, email: str) -> int:
    r = client.get("/audit/events", params={"table": "users", "action": "INSERT",
                                            "limit": 200})
    assert r.status_code == 200, r.text
    for event in r.json()["events"]:
        if (event.get("new_values") or {}).get("email") == email:
            return int(event["record_id"])
    raise AssertionError(f"no INSERT event for {email}")


def _all_events(client: httpx.Client) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 200}
    while True:
        r = client.get("/audit/events", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        events += body["events"]
        cursor = body.get("next_cursor")
        if not cursor:
            return events
        params = {"limit": 200, "cursor": cursor}


def check_trail(seen: dict[str, Any]) -> None:
    """Every change and auth event is in /audit with the right user, IP and request id."""
    ids = seen["request_ids"]
    by_request: dict[str, list[dict[str, Any]]] = {}
    for event in seen["events"]:
        by_request.setdefault(event.get("request_id") or "", []).append(event)

    def only(step: str, **expected: Any) -> dict[str, Any]:
        matches = [e for e in by_request.get(ids[step], [])
                   if all(e.get(k) == v for k, v in expected.items())]
        assert len(matches) == 1, (step, expected, by_request.get(ids[step]))
        return matches[0]

    failed = only("bob_bad_login", kind="auth", action="login_failed")
    assert failed["success"] is False
    assert failed["app_user_id"] in (None, "anonymous")
    assert failed["client_ip"] == BOB_IP
    assert only("bob_login", kind="auth", action="login")["app_user_id"] == seen["bob"]

    order = str(seen["order_id"])
    for step, action in (("bob_create", "INSERT"), ("bob_update", "UPDATE"),
                         ("bob_cancel", "UPDATE")):
        event = only(step, kind="data", table_name="orders", action=action)
        assert event["record_id"] == order
        assert event["app_user_id"] == seen["bob"]
        assert event["client_ip"] == BOB_IP
    cancel = only("bob_cancel", kind="data", table_name="orders")
    assert "status" in cancel["changed_fields"]

    refused = only("bob_escalate", kind="admin", action="privilege_escalation")
    assert (refused["success"], refused["app_user_id"]) == (False, seen["bob"])
    assert only("bob_logout", kind="auth", action="logout")["app_user_id"] == seen["bob"]

    promote = only("alice_promote", kind="data", table_name="users", action="UPDATE")
    assert promote["record_id"] == seen["carol"].split(":")[1]
    assert promote["app_user_id"] == seen["alice"]
    assert promote["client_ip"] == ALICE_IP
    assert promote["new_values"]["role"] == "admin"
    grant = only("alice_promote", kind="auth", action="role_granted")
    assert grant["app_user_id"] == seen["alice"]

    # Passwords never reach the trail, hashed or not.
    for event in seen["events"]:
        for image in (event.get("old_values") or {}, event.get("new_values") or {}):
            assert "password_hash" not in image
    assert not any(u.password in str(seen["events"]) for u in DEMO_USERS)
