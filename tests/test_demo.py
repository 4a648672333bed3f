"""`audit-mw demo`, the README's first command: up, audited, verified, and stopped by Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from audit_mw_examples.shop import DEMO_USERS

pytestmark = [pytest.mark.db, pytest.mark.slow]


def test_demo_serves_audited_events_and_stops_on_ctrl_c(server_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "AUDIT_HMAC_KEY", "AUDIT_HMAC_KEYS")}
    env["AUDIT_MW_HOME"] = str(server_dir)
    demo = subprocess.Popen(
        [sys.executable, "-m", "audit_mw.cli", "demo", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert demo.stdout is not None
        printed = []
        for line in demo.stdout:
            printed.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(printed)
        assert "verification valid" in text, text
        # The viewer's URL is the first thing on stdout (progress goes to stderr).
        told = [line for line in printed if line.strip()]
        viewer = re.fullmatch(r"Audit viewer: (http://127\.0\.0\.1:\d+/audit/ui/) .*\n",
                              told[0])
        assert viewer, text
        match = re.search(r"running at (http://127\.0\.0\.1:\d+)", text)
        assert match, text
        admin = DEMO_USERS[0]
        assert f"{admin.email} / {admin.password}" in text
        with httpx.Client(base_url=match[1], timeout=30) as client:
            login = client.post("/login", json={"email": admin.email,
                                                "password": admin.password})
            assert login.status_code == 200
            events = client.get("/audit/events", params={"limit": 200}).json()["events"]
            actions = {(e["kind"], e["action"]) for e in events}
            assert {("auth", "login_failed"), ("auth", "login"), ("data", "INSERT"),
                    ("data", "UPDATE"), ("admin", "privilege_escalation")} <= actions
            orders = [e for e in events if e["table_name"] == "orders"]
            assert orders
            assert all(e["app_user_id"].startswith("user:") for e in orders)
            page = client.get(viewer[1])
            assert page.status_code == 200
            assert "<h1>Events</h1>" in page.text
            integrity = client.get(viewer[1] + "integrity")
            assert "valid, anchored" in integrity.text
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
        assert demo.stderr is not None
        assert "audit-mw demo: stopped" in demo.stderr.read()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for stream in (demo.stdout, demo.stderr):
            if stream is not None:
                stream.close()
        subprocess.run([sys.executable, "-m", "audit_mw.cli", "server", "stop"], env=env,
                       capture_output=True, timeout=120, check=False)
