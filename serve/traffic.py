"""``copyloop traffic``: simulated users of a market replayed against a running service.

Each request is one impression of the market's world: a user drawn from its population, a
campaign drawn uniformly, the user's features as the context. The service ranks the
campaign's active variants; the replayer looks up the world's true click-through rate of the
variant the service chose, draws the click (Bernoulli), and posts it as the reward — at once
or after ``reward_delay_s``. The service never sees the world's CTR, only clicks: the signal
that trains it (clicks) and the yardstick of the report (the world's expected CTR of what was
served, against uniform and the per-request oracle on the same users) differ.

It is also the load generator of ``bench/serve.py``: requests go over keep-alive HTTP/1.1
connections (``concurrency`` of them) from :mod:`copyloop.serve.http1`, a small client on
httptools that costs a third of aiohttp's CPU per request here — CPU the service it loads,
on the same cores, gets instead.

Example:
    >>> report = run_traffic(TrafficConfig(url="http://127.0.0.1:8000", key=key), market)
    ... # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class TrafficConfig:
    """One replay.

    Args:
        url: the service's base URL (loopback for load tests).
        key: a client-scoped API key.
        requests: rank calls to make (each followed by one reward call).
        concurrency: requests in flight at once (one keep-alive connection each).
        reward_delay_s: seconds between a decision and its reward (0: at once).
        max_seconds: stop early after this long (the report says so).
        window: requests per point of the served-CTR curve (default: requests / 20).
        seed: seed of the users, campaigns and clicks.
        campaigns: campaign ids to draw from (default: every campaign of the market).
        timeout_s: per-request timeout.
        replicas: more base URLs of the same service (API replicas on one store): request
            ``i`` ranks on URL ``i mod R`` and posts its reward to the next URL, so every
            reward lands on another replica than its decision.
        extra_copy: copy the service may serve that is not in the market's catalog (new lines
            on trial), ``{variant_id: (campaign_id, text)}``: the world scores it for each
            request's user (``ctr_of_texts``), so clicks and the served CTR cover it too.
    """

    url: str
    key: str
    requests: int = 20_000
    concurrency: int = 32
    reward_delay_s: float = 0.0
    max_seconds: float = 600.0
    window: int | None = None
    seed: int = 0
    campaigns: tuple[str, ...] | None = None
    timeout_s: float = 10.0
    replicas: tuple[str, ...] = ()
    extra_copy: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for u in (self.url, *self.replicas):
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"`url` must start with http:// or https://, got {u!r}")
        if len({self.url, *self.replicas}) != 1 + len(self.replicas):
            raise ValueError("`url` and `replicas` repeat a URL — give each replica once")
        if self.requests < 1:
            raise ValueError(f"`requests` must be >= 1, got {self.requests}")
        if not 1 <= self.concurrency <= 1024:
            raise ValueError(f"`concurrency` must be in 1..1024, got {self.concurrency}")
        if not 0 <= self.reward_delay_s <= 3600:
            raise ValueError(f"`reward_delay_s` must be in [0, 3600], got {self.reward_delay_s}")
        if not self.max_seconds > 0:
            raise ValueError(f"`max_seconds` must be > 0, got {self.max_seconds}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"`window` must be >= 1, got {self.window}")


@dataclass
class TrafficReport:
    """What a replay measured. Latencies in milliseconds; CTRs are the world's expected CTR
    of the variant served (``served``), of a uniform choice among the same candidates
    (``uniform``) and of the best one (``oracle``), per window of requests."""

    requests: int
    rewards: int
    clicks: int
    errors: dict[str, int]
    seconds: float
    pairs_per_s: float
    stopped_early: bool
    rank_ms: dict[str, float]
    reward_ms: dict[str, float]
    served_ctr: float
    uniform_ctr: float
    oracle_ctr: float
    curve: list[dict[str, float]]
    config: dict[str, Any] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    replica_servers: list[dict[str, Any]] = field(default_factory=list)
    """Each replica's own metrics after the run (``server`` is the first URL's)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentiles(ms: npt.ArrayLike) -> dict[str, float]:
    """p50 / p90 / p99 / max / mean of latencies (ms)."""
    a = np.asarray(ms, np.float64)
    if a.size == 0:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


class _World:
    """The requests of a replay, drawn up front: contexts, campaigns, the true CTR of every
    candidate slot, and each request's click uniform."""

    def __init__(self, market: Any, cfg: TrafficConfig) -> None:
        from copyloop.envs.market import draw_sessions

        cat = market.catalog
        rng = np.random.default_rng(cfg.seed)
        ids = list(cat.campaign_ids)
        if cfg.campaigns is not None:
            unknown = [c for c in cfg.campaigns if c not in ids][:5]
            if unknown:
                raise ValueError(f"`campaigns` {unknown} are not campaigns of the market")
        allowed = np.array(
            [i for i, c in enumerate(ids) if cfg.campaigns is None or c in cfg.campaigns]
        )
        block = draw_sessions(market, cfg.requests, rng, 0.0)
        camps = allowed[rng.integers(0, allowed.size, cfg.requests)]
        # the session's campaign is redrawn from the allowed set; its CTRs follow the user
        du = market.user_dim
        rows = np.take(market.user_pack, block.users, axis=0)
        wt = market.world.user_table.shape[1]
        self.ctr = market.first_ctr_rows(rows[:, :du], rows[:, du : du + wt], camps, 0.0)
        self.mask = cat.slots[camps] >= 0
        self.context = block.user_feats
        self.users = block.users
        self.campaign_ids = [ids[c] for c in camps]
        self.uniform = rng.random(cfg.requests)
        vid = list(cat.variant_ids)
        self.slot_of: dict[str, tuple[int, int]] = {}
        for c in range(len(ids)):
            for k, v in enumerate(cat.slots[c]):
                if v >= 0:
                    self.slot_of[vid[v]] = (c, k)
        # copy outside the catalog: its true CTR for each request of its campaign
        self.extra: dict[str, npt.NDArray[np.float32]] = {}
        by_campaign: dict[str, list[tuple[str, str]]] = {}
        for vid_x, (cid, text) in cfg.extra_copy.items():
            if cid not in ids:
                raise ValueError(f"`extra_copy` {vid_x!r}: campaign {cid!r} is not in the market")
            by_campaign.setdefault(cid, []).append((vid_x, text))
        camp_arr = np.asarray(camps)
        for cid, lines in by_campaign.items():
            rows_c = np.flatnonzero(camp_arr == ids.index(cid))
            ctr = np.full((cfg.requests, len(lines)), np.nan, np.float32)
            if rows_c.size:
                texts = [t for _, t in lines]
                ctr[rows_c] = market.world.ctr_of_texts(texts, ids.index(cid), self.users[rows_c])
            for m, (v, _) in enumerate(lines):
                self.extra[v] = ctr[:, m]

    def true_ctr(self, i: int, variant_id: str) -> float | None:
        """The world's CTR of ``variant_id`` for request ``i`` (None: unknown copy)."""
        slot = self.slot_of.get(variant_id)
        if slot is not None:
            return float(self.ctr[i, slot[1]])
        extra = self.extra.get(variant_id)
        if extra is None or np.isnan(extra[i]):
            return None
        return float(extra[i])

    def body(self, i: int) -> bytes:
        # the user's population index as user_id: the exported log can be judged by the world
        return json.dumps(
            {
                "campaign_id": self.campaign_ids[i],
                "context": self.context[i].tolist(),
                "user_id": f"u{self.users[i]}",
            }
        ).encode()


async def _replay(
    cfg: TrafficConfig, world: _World, tick: Callable[[int], None] | None
) -> dict[str, Any]:
    from urllib.parse import quote

    from copyloop.serve.http1 import HTTPError, Pool

    n = cfg.requests
    served = np.full(n, np.nan)  # the world's CTR of the served variant for the request
    clicked = np.zeros(n, bool)
    rank_ms = np.full(n, np.nan)
    reward_ms: list[float] = []
    errors: dict[str, int] = {}
    state = {"next": 0, "rewards": 0, "done": 0}
    deadline = time.perf_counter() + cfg.max_seconds
    pending: set[asyncio.Task[None]] = set()
    json_type = "application/json"

    def fail(what: str) -> None:
        errors[what] = errors.get(what, 0) + 1

    async def post_reward(pool: Pool, eid: str, value: float) -> None:
        if cfg.reward_delay_s:
            await asyncio.sleep(cfg.reward_delay_s)
        t0 = time.perf_counter()
        path = f"/v1/events/{quote(eid, safe='')}/reward"
        try:
            status, _ = await pool.request(
                "POST", path, json.dumps({"value": value}).encode(), json_type
            )
        except (TimeoutError, OSError, HTTPError) as e:
            fail(f"reward {type(e).__name__}")
            return
        if status != 200:
            fail(f"reward {status}")
            return
        reward_ms.append((time.perf_counter() - t0) * 1e3)
        state["rewards"] += 1

    async def worker(pools: list[Pool]) -> None:
        r_count = len(pools)
        while True:
            i = state["next"]
            if i >= n or time.perf_counter() > deadline:
                return
            state["next"] = i + 1
            p, p_reward = pools[i % r_count], pools[(i + 1) % r_count]
            t0 = time.perf_counter()
            try:
                status, raw = await p.request("POST", "/v1/rank", world.body(i), json_type)
            except (TimeoutError, OSError, HTTPError) as e:
                fail(f"rank {type(e).__name__}")
                continue
            if status != 200:
                fail(f"rank {status}")
                continue
            rank_ms[i] = (time.perf_counter() - t0) * 1e3
            out = json.loads(raw)
            p_click = world.true_ctr(i, out["variant_id"])
            if p_click is None:
                fail("rank: variant not in the market (nor in extra_copy)")
                continue
            served[i] = p_click
            click = bool(world.uniform[i] < p_click)
            clicked[i] = click
            if cfg.reward_delay_s:
                task = asyncio.create_task(post_reward(p_reward, out["event_id"], float(click)))
                pending.add(task)
                task.add_done_callback(pending.discard)
            else:
                await post_reward(p_reward, out["event_id"], float(click))
            state["done"] += 1
            if tick is not None and state["done"] % 500 == 0:
                tick(state["done"])

    async with contextlib.AsyncExitStack() as stack:
        pools = [
            await stack.enter_async_context(
                Pool(u, limit=cfg.concurrency, headers={"X-API-Key": cfg.key},
                     timeout_s=cfg.timeout_s)
            )
            for u in (cfg.url, *cfg.replicas)
        ]  # fmt: skip
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(pools) for _ in range(cfg.concurrency)))
        if pending:
            await asyncio.gather(*pending)
        seconds = time.perf_counter() - t0
        servers = [await _server_metrics(p) for p in pools]
    return {
        "served": served,
        "clicked": clicked,
        "rank_ms": rank_ms,
        "reward_ms": np.asarray(reward_ms),
        "errors": errors,
        "rewards": state["rewards"],
        "seconds": seconds,
        "stopped_early": state["next"] < n,
        "servers": servers,
    }


async def _server_metrics(pool: Any) -> dict[str, Any]:
    """The service's own counters after the run (``/metrics``): freshness histogram, group
    commit, joins. Empty if the endpoint cannot be read."""
    try:
        status, body = await pool.request("GET", "/metrics")
    except Exception:  # the report stands without the server's view
        return {}
    return parse_metrics(body.decode() if status == 200 else "")


def parse_metrics(text: str) -> dict[str, Any]:
    """The few Prometheus series the report shows: the reward→serving histogram (as buckets,
    count and the bucket bound holding its p99), commits and writes, rows learned."""
    buckets: list[tuple[float, float]] = []
    pickup: list[tuple[float, float]] = []
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("copyloop_reward_to_serving_seconds_bucket"):
            le = name.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(value)))
        elif name == "copyloop_reward_to_serving_seconds_count":
            out["freshness_count"] = float(value)
        elif name == "copyloop_reward_to_serving_seconds_sum":
            out["freshness_sum_s"] = float(value)
        elif name in ("copyloop_store_commits", "copyloop_store_commit_ops"):
            out[name.removeprefix("copyloop_")] = float(value)
        elif name == "copyloop_learned_rows_total":
            out["learned_rows"] = float(value)
        elif name.startswith("copyloop_snapshot_pickup_seconds_bucket"):
            le = name.split('le="', 1)[1].split('"', 1)[0]
            pickup.append((float("inf") if le == "+Inf" else float(le), float(value)))
        elif name == "copyloop_snapshot_pickup_seconds_count":
            out["pickup_count"] = float(value)
        elif name.startswith("copyloop_decisions_total"):
            out["decisions"] = out.get("decisions", 0.0) + float(value)
    if buckets and out.get("freshness_count"):
        total = out["freshness_count"]
        out["freshness_buckets"] = buckets
        out["freshness_p99_le_s"] = next(b for b, c in buckets if c >= 0.99 * total)
        out["freshness_p50_le_s"] = next(b for b, c in buckets if c >= 0.5 * total)
    if pickup and out.get("pickup_count"):
        total = out["pickup_count"]
        out["pickup_max_le_s"] = next(b for b, c in pickup if c >= total)
        out["pickup_p99_le_s"] = next(b for b, c in pickup if c >= 0.99 * total)
    if out.get("store_commits"):
        out["mean_commit_batch"] = out.get("store_commit_ops", 0.0) / out["store_commits"]
    return out


def run_traffic(
    cfg: TrafficConfig, market: Any, tick: Callable[[int], None] | None = None
) -> TrafficReport:
    """Replay ``cfg.requests`` simulated users of ``market`` against the service at
    ``cfg.url`` and report throughput, latency and the served CTR over time."""
    try:
        import httptools  # noqa: F401
    except ImportError as e:
        raise ValueError(f"{e} (pip install 'copyloop[serve]')") from None
    world = _World(market, cfg)
    # the market and the drawn requests stay out of the collector's walks while the replay
    # measures latency (a full collection over them stalled this client's loop for ~100 ms)
    gc.collect()
    gc.freeze()
    try:
        import uvloop

        res = uvloop.run(_replay(cfg, world, tick))
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        res = asyncio.run(_replay(cfg, world, tick))
    finally:
        gc.unfreeze()
    served = res["served"]
    ok = ~np.isnan(served)
    idx = np.flatnonzero(ok)
    ctr, mask = world.ctr.astype(np.float64), world.mask
    got = served[idx]
    uni = (ctr * mask).sum(axis=1)[idx] / mask.sum(axis=1)[idx]
    best = np.where(mask, ctr, -np.inf).max(axis=1)[idx]
    window = cfg.window or max(1, cfg.requests // 20)
    curve: list[dict[str, float]] = []
    for start in range(0, idx.size, window):
        sl = slice(start, start + window)
        if idx[sl].size < window // 2 and curve:
            break
        curve.append(
            {
                "requests": float(idx[sl][-1] + 1),
                "served": float(got[sl].mean()),
                "uniform": float(uni[sl].mean()),
                "oracle": float(best[sl].mean()),
                "clicks": float(res["clicked"][idx[sl]].mean()),
            }
        )
    seconds = res["seconds"]
    return TrafficReport(
        requests=int(ok.sum()),
        rewards=int(res["rewards"]),
        clicks=int(res["clicked"].sum()),
        errors=res["errors"],
        seconds=seconds,
        pairs_per_s=float(res["rewards"] / seconds) if seconds > 0 else 0.0,
        stopped_early=bool(res["stopped_early"]),
        rank_ms=percentiles(res["rank_ms"][ok]),
        reward_ms=percentiles(res["reward_ms"]),
        served_ctr=float(got.mean()) if got.size else float("nan"),
        uniform_ctr=float(uni.mean()) if uni.size else float("nan"),
        oracle_ctr=float(best.mean()) if best.size else float("nan"),
        curve=curve,
        config={k: v for k, v in asdict(cfg).items() if k != "key"},
        server=res["servers"][0],
        replica_servers=res["servers"] if len(res["servers"]) > 1 else [],
    )


def plot_curve(report: TrafficReport, path: Any, title: str = "copyloop traffic") -> None:
    """The served CTR per window against uniform and the oracle (matplotlib, PNG/SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from copyloop.contract import atomic_path

    x = [p["requests"] for p in report.curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [p["oracle"] for p in report.curve], label="oracle (best variant per user)")
    ax.plot(x, [p["served"] for p in report.curve], label="served by the service", lw=2)
    ax.plot(x, [p["uniform"] for p in report.curve], label="uniform random")
    ax.set_xlabel("requests")
    ax.set_ylabel("expected CTR of the served copy (world)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from pathlib import Path

    p = Path(path)
    with atomic_path(p) as tmp:
        fig.savefig(tmp, format=p.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
