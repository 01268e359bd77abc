"""The store interface's behaviour, one suite over both backends (``store_url``: SQLite, and
PostgreSQL when ``COPYLOOP_TEST_PG_URL`` names a server — ``bash scripts/pg.sh start``)."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")

from copyloop.serve.store import (
    CampaignConfig,
    DecisionRecord,
    JoinedRow,
    SnapshotRecord,
    SQLiteStore,
    Store,
    VariantRecord,
    open_store,
)

NOW = 1_000.0


def _cfg(**kw: object) -> CampaignConfig:
    return CampaignConfig(campaign_id="c1", context_width=3, reward_wait_s=10.0, **kw)  # type: ignore[arg-type]


def _decision(event_id: str, ts: float = NOW, **kw: object) -> DecisionRecord:
    base: dict[str, object] = dict(
        event_id=event_id,
        ts=ts,
        campaign_id="c1",
        context=np.array([0.5, -1.0, 2.0], dtype=np.float32),
        candidates=["a", "b"],
        action="b",
        action_index=1,
        propensity=0.75,
        action_probs=[0.25, 0.75],
        model_version="v0",
        policy_id="linear_ts",
        mode="online",
        deferred=False,
        closes_at=ts + 10.0,
        user_id="u1",
        model_id="c1",
    )
    base.update(kw)
    return DecisionRecord(**base)  # type: ignore[arg-type]


def _campaign(st: Store, **kw: object) -> None:
    variants = [VariantRecord(v, "c1", f"line {v}") for v in ("a", "b")]
    st.create_campaign(_cfg(**kw), variants, "test").result()


@pytest.fixture
def st(store_url: str):
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()


def test_open_store_rejects_unknown_schemes() -> None:
    with pytest.raises(ValueError, match="sqlite:///"):
        open_store("mysql://x/y")


def test_decision_round_trip_and_duplicate_event_id(st: Store) -> None:
    _campaign(st)
    d = _decision("e1")
    st.record_decision(d).result()
    got = st.decision("e1")
    assert got is not None and got.action == "b" and got.user_id == "u1"
    assert got.action_probs == [0.25, 0.75] and got.propensity == 0.75
    np.testing.assert_array_equal(got.context, d.context)
    with pytest.raises(Exception):  # noqa: B017 - the backend's integrity error
        st.record_decision(d).result()
    assert st.decision("nope") is None


def test_rewards_accepted_duplicate_conflict_late_unknown(st: Store) -> None:
    _campaign(st)
    st.record_decision(_decision("e1")).result()
    assert st.record_reward("e1", "r1", 1.0, NOW + 1).result().status == "accepted"
    assert st.record_reward("e1", "r1", 1.0, NOW + 2).result().status == "duplicate"
    assert st.record_reward("e1", "r1", 0.0, NOW + 2).result().status == "conflict"
    late = st.record_reward("e1", "r2", 1.0, NOW + 11).result()
    assert late.status == "accepted" and late.late
    assert st.record_reward("zz", "r1", 1.0, NOW).result().status == "unknown_event"
    assert st.rewards_for(["e1"]) == {"e1": [(NOW + 1, 1.0)]}


def test_group_commit_isolates_a_failing_write(st: Store) -> None:
    _campaign(st)
    st.record_decision(_decision("dup")).result()
    futs = [st.record_decision(_decision(f"g{i}")) for i in range(20)]
    futs.insert(7, st.record_decision(_decision("dup")))
    for i, f in enumerate(futs):
        if i == 7:
            with pytest.raises(Exception):  # noqa: B017
                f.result()
        else:
            f.result()
    assert all(st.decision(f"g{i}") is not None for i in range(20))
    assert st.stats("c1")["decisions"] == 21


class _BrokenConnection:
    """A writer connection whose database went away: every statement fails, ROLLBACK too."""

    in_transaction = True

    def execute(self, *args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("the database went away (test)")

    executemany = execute

    def close(self) -> None:
        raise sqlite3.OperationalError("already gone (test)")


def test_writer_survives_a_failed_connection(st: Store) -> None:
    _campaign(st)
    st._writer_conn = _BrokenConnection()  # type: ignore[attr-defined]
    lost = st.record_decision(_decision("lost"))
    with pytest.raises(sqlite3.OperationalError, match="went away"):
        lost.result(timeout=30)  # failed, not left waiting
    # the writer is still there, on a new connection: the next write is durable
    st.record_decision(_decision("kept")).result(timeout=30)
    assert st.decision("kept") is not None and st.decision("lost") is None
    assert st.commit_stats.reconnects == 1


@pytest.mark.parametrize(
    ("linger", "busy", "commits"),
    [(0.0, True, "each"), (0.5, True, "one"), (0.5, False, "each")],
)
def test_commit_linger_packs_writes_into_one_commit(
    st: Store, linger: float, busy: bool, commits: str
) -> None:
    """Five writes 20 ms apart: without a linger each is its own commit; with a 0.5 s linger
    after a batch of several (``busy``) the writer waits for the rest and commits the five
    together; after lone writes it does not wait (each commits at once, well within the
    linger). Results and durability are the same either way."""
    _campaign(st)
    st.linger_s = linger
    st._last_batch = 2 if busy else 1  # type: ignore[attr-defined]
    before = st.commit_stats.commits
    futs, waited = [], []
    for i in range(5):
        t0 = time.perf_counter()
        futs.append(st.record_decision(_decision(f"l{i}")))
        if not busy:
            futs[-1].result(timeout=30)
            waited.append(time.perf_counter() - t0)
        time.sleep(0.02)
    for f in futs:
        f.result(timeout=30)
    n = st.commit_stats.commits - before
    assert n == 1 if commits == "one" else n >= 3
    assert all(w < 0.25 for w in waited), waited
    assert all(st.decision(f"l{i}") is not None for i in range(5))


async def _durable_from_a_loop(st: Store) -> list[object]:
    """Writes awaited on an event loop (the service's path), a duplicate event id among them."""
    import asyncio

    ok = [st.arecord_decision(_decision(f"a{i}")) for i in range(10)]
    dup = st.arecord_decision(_decision("a3"))
    out = await asyncio.gather(*ok, dup, return_exceptions=True)
    out.append(await st.arecord_reward("a1", "r", 1.0, NOW + 1))
    out.append(await st.arecord_reward("a1", "r", 1.0, NOW + 1))
    return out


def test_awaited_writes_resolve_on_the_loop(st: Store) -> None:
    import asyncio

    _campaign(st)
    out = asyncio.run(_durable_from_a_loop(st))
    assert out[:10] == [None] * 10
    assert isinstance(out[10], Exception)  # the event id was used
    assert [o.status for o in out[11:]] == ["accepted", "duplicate"]  # type: ignore[attr-defined]
    assert all(st.decision(f"a{i}") is not None for i in range(10))


def test_activation_pending_join_and_learned_since(st: Store) -> None:
    _campaign(st, aggregation="sum")
    st.record_decision(_decision("seen")).result()
    st.record_decision(_decision("later", activated=False, deferred=True)).result()
    st.record_decision(_decision("never", activated=False, deferred=True)).result()
    assert st.activate("later").result() == "ok"
    assert st.activate("nope").result() == "unknown_event"
    assert st.pending("c1", NOW + 1, 100) == []  # windows open
    pend = st.pending("c1", NOW + 11, 100)
    assert sorted(p.event_id for p in pend) == ["later", "never", "seen"]
    seqs = []
    for i, e in enumerate(["seen", "later", "never"]):
        learned = e != "never"
        seqs.append(st.commit_join([JoinedRow(e, float(i), "default", learned)]).result())
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert st.activate("never").result() == "joined"
    assert st.pending("c1", NOW + 11, 100) == []
    rows = st.learned_since("c1", 0, 100)
    assert [(r.decision.event_id, r.reward, r.join_seq) for r in rows] == [
        ("seen", 0.0, seqs[0]),
        ("later", 1.0, seqs[1]),
    ]
    assert [r.decision.event_id for r in st.learned_since("c1", seqs[0], 100)] == ["later"]


def test_early_rows_are_pending_before_the_window_closes(st: Store) -> None:
    _campaign(st)
    st.record_decision(_decision("e", early=True)).result()
    assert st.pending("c1", NOW + 1, 10) == []
    st.record_reward("e", "r", 1.0, NOW + 1).result()
    assert [p.event_id for p in st.pending("c1", NOW + 1, 10)] == ["e"]


def test_snapshots_latest_keys_meta_audit(st: Store) -> None:
    _campaign(st)
    assert st.latest_snapshot("c1") is None
    for v in (1, 2, 3):
        st.record_snapshot(SnapshotRecord("c1", v, f"c1@{v}", NOW + v, f"/s/{v}", v, v)).result()
    assert [s.version for s in st.snapshots("c1")] == [1, 2, 3]
    latest = st.latest_snapshot("c1")
    assert latest is not None and latest.version == 3 and latest.path == "/s/3"
    key = st.create_key("client", "test").result()
    rec = st.key(key.split("_", 2)[1])
    assert rec is not None and rec.scope == "client"
    assert st.get_meta("x") is None
    st.set_meta("x", b"\x00\x01").result()
    st.set_meta("x", b"\x02").result()
    assert st.get_meta("x") == b"\x02"
    actions = [a["action"] for a in st.audit_log()]
    assert actions[0] == "campaign.create" and actions.count("snapshot.publish") == 3


def test_audit_is_append_only(store_url: str) -> None:
    st = open_store(store_url)
    _campaign(st)
    st.close()
    if store_url.startswith("sqlite"):
        import sqlite3

        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            sqlite3.connect(store_url.removeprefix("sqlite:///")).execute("DELETE FROM audit")
    else:
        import psycopg

        with psycopg.connect(store_url, autocommit=True) as c:
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                c.execute("DELETE FROM audit")
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                c.execute("UPDATE audit SET actor='x'")


def _script(st: Store) -> None:
    """The same operations for the export comparison."""
    _campaign(st, aggregation="sum")
    for i in range(6):
        st.record_decision(_decision(f"e{i}", ts=NOW + i, user_id=f"u{i}")).result()
    st.record_reward("e1", "r", 1.0, NOW + 2).result()
    st.record_reward("e1", "s", 2.0, NOW + 3).result()
    st.record_reward("e2", "r", 0.5, NOW + 30).result()  # late
    st.commit_join([JoinedRow("e1", 3.0, "reward", True)]).result()


def test_export_log_is_the_same_on_both_backends(store_url: str, tmp_path: Path) -> None:
    ref = open_store(f"sqlite:///{tmp_path / 'ref.db'}")
    st = open_store(store_url)
    try:
        _script(ref)
        _script(st)
        a = ref.export_log(tmp_path / "a.parquet", now=NOW + 100)
        b = st.export_log(tmp_path / "b.parquet", now=NOW + 100)
    finally:
        ref.close()
        st.close()
    assert a.rows == b.rows == 6
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    )


def test_close_and_reopen_keeps_acknowledged_writes(store_url: str) -> None:
    st = open_store(store_url)
    _campaign(st)
    futs = [st.record_decision(_decision(f"e{i}")) for i in range(50)]
    for f in futs:
        f.result()
    seq = st.commit_join([JoinedRow("e0", 1.0, "reward", True)]).result()
    st.close()
    with pytest.raises(RuntimeError, match="closed"):
        st.record_decision(_decision("x")).result()
    st = open_store(store_url)
    try:
        assert st.stats("c1")["decisions"] == 50
        assert st.commit_join([JoinedRow("e1", 1.0, "reward", True)]).result() > seq
    finally:
        st.close()


def _writer(url: str, who: int, n: int, barrier: object, out: object) -> None:
    st = open_store(url)
    try:
        futs = [st.record_decision(_decision(f"p{who}-{i}")) for i in range(n)]
        # both processes also try the same event ids: one of each pair must fail
        shared = [st.record_decision(_decision(f"s-{i}")) for i in range(n)]
        for f in futs:
            f.result()
        dup = sum(f.exception() is not None for f in shared)
        barrier.wait(timeout=60)  # type: ignore[attr-defined]
        # then they race rewards for the same events, each in its own order
        events = [f"p{j}-{i}" for j in (0, 1) for i in range(n)] + [f"s-{i}" for i in range(n)]
        if who:
            events.reverse()
        outs = [st.record_reward(e, "r", 1.0, NOW + 1) for e in events]
        status = [f.result().status for f in outs]
        retries = st.commit_stats.retries
        out.put((who, dup, dict(zip(events, status, strict=True)), retries))  # type: ignore[attr-defined]
    except BaseException as e:
        out.put((who, -1, repr(e), -1))  # type: ignore[attr-defined]
        raise
    finally:
        st.close()


def test_two_processes_share_one_postgres_store(store_url: str) -> None:
    if not store_url.startswith("postgres"):
        pytest.skip("several processes share a PostgreSQL store, not a SQLite file")
    st = open_store(store_url)
    _campaign(st)
    n = 150
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(store_url, w, n, barrier, q)) for w in (0, 1)]
    for p in procs:
        p.start()
    try:
        results = [q.get(timeout=120) for _ in procs]
        assert all(dup >= 0 for _, dup, _, _ in results), results
        # the writers lock decision rows in one sorted order (SQLiteStore._order, _prelock):
        # reversed reward orders make them wait for each other, never deadlock and rerun
        assert [r for *_, r in results] == [0, 0]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        assert sum(dup for _, dup, _, _ in results) == n  # each shared id stored exactly once
        (_, _, a, _), (_, _, b, _) = results
        assert a.keys() == b.keys() and len(a) == 3 * n
        for e in a:  # exactly one process's reward accepted, the other's a duplicate
            assert sorted([a[e], b[e]]) == ["accepted", "duplicate"], e
        assert st.stats("c1")["decisions"] == 3 * n
        rewards = st.rewards_for(list(a))
        assert len(rewards) == 3 * n and all(len(v) == 1 for v in rewards.values())
        pend = st.pending("c1", NOW + 11, 10_000)
        assert len(pend) == 3 * n
        st.commit_join([JoinedRow(p.event_id, 1.0, "reward", True) for p in pend]).result()
        assert st.pending("c1", NOW + 11, 10_000) == []
        assert len(st.learned_since("c1", 0, 10_000)) == 3 * n
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        st.close()


@pytest.mark.parametrize(
    ("keys", "order"),
    [
        ([("b",), ("a",), ("c",)], [1, 0, 2]),  # one run of single-event writes: sorted
        ([("b",), ("a",), ("b",), ("a",)], [1, 3, 0, 2]),  # same event: submission order kept
        ([("b",), (), ("a",), ("c",)], [0, 1, 2, 3]),  # a keyless write bounds the runs
        ([("c",), ("b",), ("a", "z"), ("a",)], [1, 0, 2, 3]),  # so does a join of many rows
        ([(), ()], [0, 1]),
        ([], []),
    ],
)
def test_writes_run_in_one_global_event_order(
    keys: list[tuple[str, ...]], order: list[int]
) -> None:
    batch = [(lambda c: None, None, k) for k in keys]
    assert SQLiteStore._order(batch) == order  # type: ignore[arg-type]
