"""The dashboard (issue 17) rendered by a real browser: the service runs on 127.0.0.1 in a
thread (uvicorn), Debian's Chromium renders ``/dashboard`` headless — once to a screenshot,
once to its DOM — and every number the page carries (``data-k``) is checked against the store.

Chromium comes from the distribution's packages (``scripts/setup_system.sh``); without it the
test skips, unless ``COPYLOOP_REQUIRE_CHROMIUM=1`` (CI), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
import httpx
import uvicorn
from test_serve import FEATURIZER, HashEncoder

from copyloop.serve import create_app
from copyloop.serve.autopilot import Verdict, run_once


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        why = "Chromium is not installed (bash scripts/setup_system.sh installs Debian's)"
        if os.environ.get("COPYLOOP_REQUIRE_CHROMIUM") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return exe


class _Numbers(HTMLParser):
    """``data-k`` values, keyed by the enclosing ``data-variant``/``data-gate``/``data-policy``
    row if any."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[tuple[str, str], str] = {}
        self._row = ""
        self._key: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr":
            self._row = a.get("data-variant") or a.get("data-gate") or a.get("data-policy") or ""
        self._key = a.get("data-k")

    def handle_data(self, data: str) -> None:
        if self._key is not None and data.strip():
            self.values[(self._row, self._key)] = data.strip()
            self._key = None


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, object, str]]:
    from copyloop.serve import ServiceConfig

    cfg = ServiceConfig(
        store=f"sqlite:///{tmp_path / 's.db'}",
        featurizer=FEATURIZER,
        encoder=HashEncoder(),
        learn_interval_s=None,
        publish_interval_s=0,
        snapshot_interval_s=0,
    )
    app = create_app(cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the service did not start in 30 s"
        time.sleep(0.05)
    try:
        svc = app.state.service
        yield f"http://127.0.0.1:{port}", svc, svc.store.create_key("admin", "test").result()
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_dashboard_in_headless_chromium_matches_the_store(
    served: tuple[str, object, str], tmp_path: Path
) -> None:
    exe = _chromium()
    base, svc, key = served
    admin = {"X-API-Key": key}
    with httpx.Client(base_url=base, headers=admin, timeout=10) as c:
        body = {
            "campaign_id": "spring",
            "context_width": 3,
            "agent_params": {"seed": 1},
            "control": "a",
            "explore_share": 0.3,
            "variants": [
                {"variant_id": "a", "text": "Shop the sale"},
                {"variant_id": "b", "text": "Free shipping today"},
                {"variant_id": "c", "text": "New arrivals are in"},
            ],
        }
        assert c.post("/v1/admin/campaigns", json=body).status_code == 201
        trial = {"variants": [{"variant_id": "n1", "text": "A line on trial"}]}
        assert c.post("/v1/admin/campaigns/spring/candidates", json=trial).status_code == 200
        ctr = {"a": 0.05, "b": 0.08, "c": 0.04, "n1": 0.3}
        rng = np.random.default_rng(5)
        for i in range(400):  # event ids given: the decisions, and so the verdict, replay
            body = {"campaign_id": "spring", "context": [0.1, 0.2, 0.3], "event_id": f"d{i}"}
            r = c.post("/v1/rank", json=body)
            out = r.json()
            click = float(rng.random() < ctr[out["variant_id"]])
            c.post(f"/v1/events/{out['event_id']}/reward", json={"value": click})
        svc.learner.step()  # type: ignore[attr-defined]

        def settle(cid: str, vid: str, promote: bool, evidence: dict) -> None:
            verdict = "promote" if promote else "reject"
            path = f"/v1/admin/campaigns/{cid}/candidates/{vid}/{verdict}"
            assert c.post(path, json={"evidence": evidence}).status_code == 200

        def judge(cid: str) -> list[Verdict]:
            body = {"min_impressions": 40, "max_impressions": 80}
            r = c.post(f"/v1/admin/campaigns/{cid}/judge", json=body)
            assert r.status_code == 200, r.text
            return [Verdict(campaign_id=cid, **v) for v in r.json()]

        verdicts = run_once(judge, settle, ["spring"])
        assert [v.action for v in verdicts] == ["promote"], [v.reason for v in verdicts]
        # an agent setting adopted with its evidence (the policy gate's numbers)
        ev = {"difference": 0.01, "lower": 0.002, "upper": 0.018, "rows": 300}
        body = {"agent": "logistic_ts", "params": {"seed": 1}, "evidence": ev}
        r = c.post("/v1/admin/campaigns/spring/policy", json=body)
        assert r.status_code == 200, r.text
        assert c.get("/dashboard?campaign=spring").status_code == 200
        assert c.get("/dashboard", headers={"X-API-Key": "cl_wrong"}).status_code == 401

    url = f"{base}/dashboard?campaign=spring&key={key}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    shot = tmp_path / "dashboard.png"
    run = dict(
        capture_output=True, timeout=120, check=False, env={**os.environ, "HOME": str(tmp_path)}
    )
    p = subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1200,1800", url], **run)  # type: ignore[call-overload]
    assert shot.is_file() and shot.stat().st_size > 10_000, p.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = subprocess.run([exe, *flags, "--dump-dom", url], **run)  # type: ignore[call-overload]
    dom = p.stdout.decode()
    assert "<svg" in dom and "polyline" in dom, dom[:500]
    parse = _Numbers()
    parse.feed(dom)
    got = parse.values

    store = svc.store  # type: ignore[attr-defined]
    stats = store.stats("spring")
    assert int(got["", "decisions"]) == stats["decisions"] == 400
    assert int(got["", "joined"]) == stats["joined"]
    assert got["", "served_ctr"] == f"{stats['mean_joined_reward']:.4f}"
    assert int(got["", "variant_set"]) == store.variant_sets("spring")[-1].version
    assert int(got["", "snapshot_version"]) == svc.runtimes["spring"].snapshot_version  # type: ignore[attr-defined]
    for vid, n in stats["served"].items():
        assert int(got[vid, "decisions"]) == n, vid
    assert got["n1", "verdict"] == "promote"
    assert got["", "agent"] == "logistic_ts()"
    assert got["0", "gain"] == "+0.0100 [0.0020, 0.0180]"
    assert float(got["", "decisions_per_s"]) > 0
    assert re.fullmatch(r"\d+", got["", "model_version"])
