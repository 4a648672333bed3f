"""Sample traffic for the example shop, as the demo sends it."""

from __future__ import annotations

import httpx
from audit_mw_examples.shop import DEMO_USERS


def send_sample_traffic(base_url: str) -> None:
    """Logins (one failed), orders created, changed and cancelled, a role change."""
    alice, bob, carol = DEMO_USERS
    with httpx.Client(base_url=base_url, timeout=30) as client:
        client.post("/login", json={"email": bob.email, "password": "not-his-password"})
        client.post("/login", json={"email": bob.email, "password": bob.password})
        first = client.post("/orders", json={"item": "notebook", "quantity": 1,
                                             "unit_price": "4.20"}).json()["order"]
        second = client.post("/orders", json={"item": "fountain pen", "quantity": 1,
                                              "unit_price": "32.00"}).json()["order"]
        client.patch(f"/orders/{first['id']}", json={"quantity": 3})
        client.post(f"/orders/{second['id']}/cancel")
        client.post("/admin/users/1/role", json={"role": "member"})  # refused: not an admin
        client.post("/logout")
    with httpx.Client(base_url=base_url, timeout=30) as client:
        client.post("/login", json={"email": carol.email, "password": carol.password})
        client.post("/orders", json={"item": "ink", "quantity": 2, "unit_price": "6.50"})
        client.post("/logout")
    with httpx.Client(base_url=base_url, timeout=30) as client:
        client.post("/login", json={"email": alice.email, "password": alice.password})
        client.get("/audit/events", params={"limit": 10})
        client.post("/logout")
