"""Fit a policy on a logged DecisionLog and evaluate it on held-out rows: the library behind
``copyloop agent fit`` and ``copyloop agent eval``.

The journey: read a log (simulated, imported or exported from the service) → :func:`split_log`
into the rows a policy learns from and the rows it is judged on → :func:`store_for` the
variants (copy features, or one-hot arms for an imported log's action labels) →
:func:`fit_policy` through the same log-row path the service learns by → :func:`save_fitted`
(the snapshot, its variant store, and a record of what it was fit on) → on the held-out rows,
:func:`policy_probs` gives the frozen policy's distribution over each row's candidates, in the
slots off-policy evaluation reads.

Example:
    >>> log = read_log("logs.parquet", read_variants_for("logs.parquet"))  # doctest: +SKIP
    >>> fit, held = split_log(log, 0.8)  # doctest: +SKIP
    >>> store = store_for(log.variants)  # doctest: +SKIP
    >>> pol = fit_policy("linear_ts", {"seed": 0}, fit, store)  # doctest: +SKIP
    >>> probs = policy_probs(pol, held, store)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from copyloop.agents.base import Policy
from copyloop.agents.features import feature_dim
from copyloop.agents.store import VariantStore
from copyloop.agents.warm import log_weights
from copyloop.contract import DecisionLog, LogValidationError, VariantsTable, atomic_path

MAX_HEAD_DIM = 2048
"""Widest linear head of an agent with a dense posterior (LinearTS, LinUCB) fit here:
``(context + 1) × (variant features + 1)`` weights for the interaction map. Its d×d posterior
is refactorised per decision batch, so a wider one costs minutes per batch and gigabytes."""

MAX_DIAGONAL_HEAD_DIM = 16384
"""Widest head of an agent with a diagonal posterior (LogisticTS): each update holds a
(batch, d) design, 4096 × 16384 float64 = 512 MB."""

FIT_FORMAT = "copyloop-agent-fit/1"


# ---- variants and policies ------------------------------------------------------------------
def store_for(variants: VariantsTable, market: Any = None) -> VariantStore:
    """The variant store agents see a variants table through.

    With a market and embeddings in the table, each variant is featurized by the market's
    catalog featurizer (the features the agents see in the env and the service). Otherwise —
    an imported log, whose actions are labels — one-hot arm features (see
    :meth:`VariantStore.from_variants_table`).
    """
    featurizer = None
    if market is not None and variants.embeddings is not None:
        featurizer = market.catalog.featurizer
    return VariantStore.from_variants_table(variants, featurizer)


def agent_class(name: str) -> type[Policy]:
    """The policy class registered as ``name`` in :data:`copyloop.agents.POLICIES`."""
    from copyloop.agents import POLICIES

    if name not in POLICIES:
        raise ValueError(f"`agent` must be one of {', '.join(sorted(POLICIES))}, got {name!r}")
    return POLICIES[name]


def parse_params(name: str, items: Sequence[str]) -> dict[str, Any]:
    """Constructor arguments of agent ``name`` from ``key=value`` strings, typed by the
    constructor's defaults (numbers, booleans, ``none``, comma lists such as ``0,5``).

    Raises:
        ValueError: not ``key=value``, a parameter the agent does not have, or a value of the
            wrong kind — naming the parameters it has.
    """
    sig = inspect.signature(agent_class(name).__init__)
    accepted = {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"`param` {item!r} is not key=value — e.g. noise=0.1")
        if key not in accepted:
            raise ValueError(
                f"`param` {key!r}: {name} has no such parameter; its parameters are "
                f"{', '.join(accepted)}"
            )
        out[key] = _coerce(value.strip(), accepted[key], key)
    return out


def _coerce(value: str, default: Any, key: str) -> Any:
    def bad(kind: str) -> ValueError:
        return ValueError(f"`param` {key}={value!r}: expected {kind}")

    if isinstance(default, bool):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise bad("true or false")
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            raise bad("an integer") from None
    if isinstance(default, float):
        try:
            return float(value)
        except ValueError:
            raise bad("a number") from None
    if isinstance(default, str):
        return value
    # None or a sequence default: a number, none, a JSON list, or a comma list of numbers
    if value.lower() in ("none", "null"):
        return None
    try:
        parts = [json.loads(v) for v in value.strip("[]()").split(",")]
    except json.JSONDecodeError:
        raise bad("a number, a comma list of numbers, or none") from None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in parts):
        raise bad("a number, a comma list of numbers, or none")
    return tuple(parts) if ("," in value or isinstance(default, tuple | list)) else parts[0]


def make_policy(name: str, params: Mapping[str, Any]) -> Policy:
    """A fresh agent ``name`` with ``params``, one that learns from log rows.

    Raises:
        ValueError: bad parameter values (naming the agent), or an agent that cannot learn
            from rows (PPO learns from its own rollouts; its message says how).
    """
    cls = agent_class(name)
    try:
        policy = cls(**params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} parameters: {e}") from None
    if not policy.learns_from_rows:
        raise ValueError(f"{cls.__name__} cannot learn from log rows: {policy.how_it_learns}")
    return policy


# ---- fitting --------------------------------------------------------------------------------
def check_learnable(policy: Policy, log: DecisionLog, store: VariantStore) -> int:
    """Refuse a log ``policy`` (from :func:`make_policy`) cannot learn from; return the rows
    with an observed reward.

    Raises:
        ValueError: no observed reward; a model wider than :data:`MAX_HEAD_DIM` (dense
            posterior) or :data:`MAX_DIAGONAL_HEAD_DIM` from the log's context and the
            variants' features; segment columns outside the context;
            rewards outside [0, 1] for an agent that models clicks.
    """
    name = type(policy).__name__
    r = log.reward
    observed = ~np.isnan(r)
    n_obs = int(observed.sum())
    if n_obs == 0:
        raise LogValidationError(
            f"the log has no observed rewards (`reward` is null in all {log.n_rows:,} rows) — "
            "an agent learns from outcomes; join the rewards in before fitting"
        )
    from copyloop.agents.ts import BernoulliTSPolicy, LogisticTSPolicy

    du, dc = log.context_dim, store.dim
    kind = getattr(policy, "features", None)
    if isinstance(kind, str):
        d = feature_dim(kind, du, dc)
        limit = MAX_DIAGONAL_HEAD_DIM if isinstance(policy, LogisticTSPolicy) else MAX_HEAD_DIM
        if d > limit:
            raise ValueError(
                f"{name} with features={kind!r} would learn {d:,} weights from {du} context "
                f"and {dc} variant features ((context + 1) × (variant features + 1)); at most "
                f"{limit:,} — use features=candidate, fewer context columns (e.g. "
                "--categorical-encoding hash with a small --hash-dim at import), fewer "
                "variants per log, or logistic_ts (a diagonal posterior)"
            )
    seg = getattr(policy, "segment_columns", None)
    if seg is not None and not 0 <= seg[0] < seg[1] <= du:
        raise ValueError(
            f"`segment_columns` {tuple(seg)} is outside the log's {du} context features — "
            f"give (start, stop) with 0 <= start < stop <= {du}"
        )
    if isinstance(policy, BernoulliTSPolicy | LogisticTSPolicy):
        bad = observed & ((r < 0) | (r > 1))
        if bad.any():
            raise LogValidationError(
                f"{name} models clicks, so `reward` must be in [0, 1]; rows "
                f"{np.flatnonzero(bad)[:5].tolist()} have {r[bad][:5].tolist()} — use "
                "linear_ts for other rewards"
            )
    if np.all(r[observed] == r[observed][0]):
        warnings.warn(
            f"every observed reward in the log is {r[observed][0]:g} ({n_obs:,} rows): the "
            "agent learns nothing that tells variants apart — log more traffic",
            stacklevel=2,
        )
    return n_obs


def fit_policy(
    name: str,
    params: Mapping[str, Any],
    log: DecisionLog,
    store: VariantStore,
    *,
    batch_size: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> Policy:
    """A fresh agent ``name`` trained on ``log``'s rows, with ``store`` attached.

    Each row with an observed reward teaches (context, the chosen variant's features from
    ``store``, reward) through :meth:`~copyloop.agents.Policy.learn_log` — the path of warm
    starts and the service's delayed rewards. Counting agents (UCB1, epsilon-greedy,
    Bernoulli TS) learn with the propensity weights of :func:`~copyloop.agents.warm.warm_start`.

    Args:
        name: a key of :data:`copyloop.agents.POLICIES`.
        params: its constructor arguments.
        log: the rows to learn from (``action`` ids must be in ``store``).
        store: the variants' features.
        batch_size: rows per update.
        progress: called with the rows learned so far.

    Raises:
        ValueError: see :func:`check_learnable`, :func:`make_policy`.
    """
    policy = make_policy(name, params)
    check_learnable(policy, log, store)
    policy.attach(store)
    return teach(policy, log, store, batch_size=batch_size, progress=progress)


def teach(
    policy: Policy,
    log: DecisionLog,
    store: VariantStore,
    *,
    batch_size: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> Policy:
    """Teach ``policy`` (already attached to ``store``) ``log``'s rows with an observed reward,
    in order, through :meth:`~copyloop.agents.Policy.learn_log` — :func:`fit_policy`'s step,
    also for a policy that keeps learning after being judged on a block of rows (progressive
    validation). Returns ``policy``."""
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    weights = log_weights(policy, log)
    seen = ~np.isnan(log.reward)
    rows = log.table.filter(pa.array(seen))
    w = None if weights is None else weights[seen]
    # One learn_log call per update batch of observed rows: the same updates as one call on the
    # whole log, but VariantStore.rows (which learn_log looks the actions up with) builds its
    # "repeated ids" message in O(n²) over the ids it is given, and in a log every action
    # repeats — minutes on 100k rows, against O(batch²) per call here.
    for start in range(0, rows.num_rows, batch_size):
        part = DecisionLog(rows.slice(start, batch_size), variants=log.variants)
        policy.learn_log(
            part,
            store,
            sample_weight=None if w is None else w[start : start + batch_size],
            batch_size=batch_size,
        )
        if progress is not None:
            progress(start + part.n_rows)
    return policy


# ---- splitting ------------------------------------------------------------------------------
def split_order(log: DecisionLog, by_time: bool = True) -> tuple[npt.NDArray[np.int64], str]:
    """Rows in split order and its name: by timestamp (ties in row order) when ``by_time`` and
    the log has more than one distinct timestamp, else row order."""
    n = log.n_rows
    if by_time and n:
        ts = np.asarray(log.table.column("ts").cast("int64").to_numpy(), np.int64)
        if ts.min() != ts.max():
            return np.argsort(ts, kind="stable").astype(np.int64), "time"
    return np.arange(n, dtype=np.int64), "row order"


def split_log(
    log: DecisionLog, train_frac: float, by_time: bool = True
) -> tuple[DecisionLog, DecisionLog]:
    """(fit, held-out): the first ``train_frac`` of the rows in :func:`split_order` and the
    rest. Deterministic, so a policy fit on the first part can later be evaluated on exactly
    the rest.

    Raises:
        ValueError: ``train_frac`` outside (0, 1), or a part that would be empty.
    """
    if not 0.0 < train_frac < 1.0:
        raise ValueError(
            f"`split` must be in (0, 1) — the share of rows to fit on — got {train_frac}"
        )
    order, _ = split_order(log, by_time)
    n_fit = int(log.n_rows * train_frac)
    if not 0 < n_fit < log.n_rows:
        raise ValueError(
            f"`split` {train_frac} of {log.n_rows:,} rows leaves an empty part — the log is too "
            "small to split; evaluate on another log"
        )
    table = log.table
    return (
        DecisionLog(table.take(order[:n_fit]), variants=log.variants),
        DecisionLog(table.take(order[n_fit:]), variants=log.variants),
    )


# ---- reading ----------------------------------------------------------------------------------
def read_log(path: str | os.PathLike[str], variants: VariantsTable | None = None) -> DecisionLog:
    """Read a DecisionLog, first refusing one without propensities with a message that says
    why they matter (the contract's own check names the rows)."""
    import pyarrow.parquet as pq

    from copyloop.contract import guard_read

    p = Path(path)
    if p.is_file():
        names = guard_read(p, "log", lambda: pq.read_schema(p)).names
        why = (
            "agent fit weights counting agents by it and agent eval's estimators need the "
            "logging policy's probability of every logged action — log it, or import the "
            "source with --propensity-col"
        )
        if "propensity" not in names:
            raise LogValidationError(f"{p} has no `propensity` column: {why}")
        col = guard_read(p, "log", lambda: pq.read_table(p, columns=["propensity"]))
        if col.num_rows and col.column(0).null_count == col.num_rows:
            raise LogValidationError(
                f"{p} has no propensities (`propensity` is null in all {col.num_rows:,} "
                f"rows): {why}"
            )
    return DecisionLog.read(p, variants=variants)


# ---- the fitted artifact ----------------------------------------------------------------------
@dataclass(frozen=True)
class FitInfo:
    """What a policy was fit on, saved beside it (``<policy>.fit.json``) and checked before
    it is evaluated.

    Attributes:
        agent: the agent's name.
        params: its constructor arguments.
        context_width: the fit log's context features.
        context_names: their names (the log's ``context_names`` metadata), or None.
        campaigns: the campaigns of the policy's variant store.
        n_variants: its variants.
        arm_features: ``"text"`` (featurized copy) or ``"onehot"`` (one column per variant).
        log: the fit log's path as given.
        log_pair_id: the fit log file's pair id (identifies that write of the log), or None.
        log_rows: rows in the fit log file.
        split: the share of rows fit on (None: all).
        split_by: ``"time"`` or ``"row order"`` (None without a split).
        fit_rows: rows in the fit part.
        learned_rows: rows with an observed reward, learned from.
        weighted: whether rows were propensity-weighted.
        policy_sha256: sha256 of the saved policy file (ties the record to it).
    """

    agent: str
    params: dict[str, Any]
    context_width: int
    context_names: list[str] | None
    campaigns: list[str]
    n_variants: int
    arm_features: str
    log: str
    log_pair_id: str | None
    log_rows: int
    split: float | None
    split_by: str | None
    fit_rows: int
    learned_rows: int
    weighted: bool
    policy_sha256: str = ""
    format: str = field(default=FIT_FORMAT)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitInfo:
        return cls(**dict(data))


def fit_record_path(policy_path: str | os.PathLike[str]) -> Path:
    """The fit record beside a policy file: ``policy.npz`` → ``policy.fit.json``."""
    return Path(policy_path).with_suffix(".fit.json")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_fitted(policy: Policy, path: str | os.PathLike[str], info: FitInfo) -> FitInfo:
    """Save ``policy`` (with its attached store) and its fit record, as one unit: the record
    is put in place first, the policy last, so an interrupted save leaves no policy file
    without its record. Returns the record as written."""
    out = Path(path)
    record = fit_record_path(out)
    with atomic_path(out) as tmp:
        policy.save(tmp)
        done = FitInfo.from_dict({**info.to_dict(), "policy_sha256": _file_sha256(tmp)})
        with atomic_path(record, "--out") as rtmp:
            rtmp.write_text(json.dumps(done.to_dict(), indent=2) + "\n", encoding="utf-8")
    return done


def load_fitted(path: str | os.PathLike[str]) -> tuple[Policy, FitInfo | None]:
    """A saved policy and its fit record (None when it has none: a policy saved from Python).

    Raises:
        ValueError: an unreadable policy or record, a policy without a variant store, or a
            record written for another file.
    """
    p = Path(path)
    policy = Policy.load(p)
    if policy.store is None:
        raise ValueError(
            f"{p} carries no variant store — save the policy with its store attached "
            "(policy.attach(store).save(path), as `copyloop agent fit` does)"
        )
    rp = fit_record_path(p)
    if not rp.is_file():
        return policy, None
    try:
        info = FitInfo.from_dict(json.loads(rp.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{rp} is not a readable fit record ({e}) — re-run agent fit") from None
    if info.policy_sha256 != _file_sha256(p):
        raise ValueError(
            f"{rp} was written for another version of {p.name} (checksums differ) — re-run "
            "agent fit, or remove the stale record"
        )
    return policy, info


# ---- evaluation -------------------------------------------------------------------------------
def eval_split(info: FitInfo | None, meta: Mapping[str, str], split: float | None) -> float | None:
    """The split to evaluate with, so that a policy is never judged on rows it was fit on.

    On the log the policy was fit on (same pair id), the held-out part of its fit split is
    used (``split`` may be omitted); a policy fit on all of that log is refused.
    """
    if info is None or info.log_pair_id is None or info.log_pair_id != meta.get("pair_id"):
        return split
    if info.split is None:
        raise ValueError(
            f"this policy was fit on every row of this log ({info.log}); evaluating it there "
            "would overstate it — evaluate on another log, or fit with `split` and evaluate "
            "the held-out part"
        )
    if split is None:
        return info.split
    if split < info.split:
        raise ValueError(
            f"this policy was fit on the first {info.split:g} of this log, so `split` {split:g} "
            f"would evaluate it on rows it learned from — pass {info.split:g} (or leave it out)"
        )
    return split


def check_eval_log(
    policy: Policy, info: FitInfo | None, log: DecisionLog, meta: Mapping[str, str]
) -> None:
    """Refuse a log whose features differ from the fit log's.

    Raises:
        ValueError: another context width, other context names (when both logs name them).
    """
    widths = getattr(policy, "_widths", None)
    width = info.context_width if info is not None else (widths or {}).get("user")
    if width is not None and log.context_dim != width:
        raise ValueError(
            f"the log has {log.context_dim} context features but the policy was fit on "
            f"{width} — evaluate on a log with the fit log's features (the same simulator, or "
            "the same import mapping)"
        )
    names = json.loads(meta["context_names"]) if "context_names" in meta else None
    fit_names = None if info is None else info.context_names
    if fit_names is not None and names is not None and list(names) != list(fit_names):
        diff = [
            (i, a, b) for i, (a, b) in enumerate(zip(fit_names, names, strict=False)) if a != b
        ][:3]
        shown = "; ".join(f"#{i}: fit {a!r}, here {b!r}" for i, a, b in diff)
        raise ValueError(
            f"the log's context features are not the fit log's ({shown or 'other names'}) — "
            "evaluate on a log imported with the same mapping and categories"
        )


def candidate_rows(log: DecisionLog, store: VariantStore) -> npt.NDArray[np.int64]:
    """Store row of every candidate slot, ``(n, K)``, -1 past a row's candidates.

    Slot ``j`` is the row's ``j``-th candidate: from ``candidates``, or for a null
    ``candidates`` the ``j``-th variant of its campaign in the log's variants table — the slots
    of :func:`copyloop.ope.data.feedback_from_log`.

    Raises:
        ValueError: a candidate the store does not know (a policy fit on another campaign
            set), or null candidates without a variants table.
    """
    camp_sets = log.variants.campaign_variants() if log.variants is not None else {}
    index = {v: i for i, v in enumerate(store.ids)}
    per_row: list[list[str]] = []
    for camp, cands in zip(
        log.table.column("campaign_id").to_pylist(),
        log.table.column("candidates").to_pylist(),
        strict=True,
    ):
        if cands is None:
            cands = camp_sets.get(camp)
            if cands is None:
                raise LogValidationError(
                    f"`candidates` is null for campaign {camp!r} and the variants table does not "
                    "have it — pass the variants table the log was written with"
                )
        per_row.append(cands)
    unknown = sorted({v for cs in per_row for v in cs if v not in index})
    if unknown:
        own = sorted(set(store.campaigns))
        raise ValueError(
            f"{len(unknown):,} of the log's candidate variants are not in the policy's variant "
            f"store (e.g. {unknown[:3]}): it was fit on another campaign set ({len(own)} "
            f"campaigns, e.g. {own[:3]}) — evaluate it on a log of the campaigns it was fit on"
        )
    k = max(len(cs) for cs in per_row)
    out = np.full((len(per_row), k), -1, np.int64)
    for i, cs in enumerate(per_row):
        out[i, : len(cs)] = [index[v] for v in cs]
    return out


def policy_probs(
    policy: Policy, log: DecisionLog, store: VariantStore | None = None, *, batch_size: int = 8192
) -> npt.NDArray[np.float64]:
    """The frozen policy's distribution over each row's candidates, ``(n, K)``, in the slots of
    :func:`candidate_rows` — the target probabilities for off-policy evaluation.

    Runs the batched decision path (``action_probs`` on padded observations built from the
    store's features), which does not advance the policy: the same call gives the same result.
    """
    st = store if store is not None else policy.store
    if st is None:
        raise ValueError("no variant store: attach one (policy.attach(store)) or pass store=")
    rows = candidate_rows(log, st)
    n, k = rows.shape
    feats = np.vstack([st.features, np.zeros((1, st.dim), np.float32)])  # -1 → zero padding
    ctx = log.context
    out = np.zeros((n, k))
    for start in range(0, n, batch_size):
        r = rows[start : start + batch_size]
        b = r.shape[0]
        obs = {
            "user": ctx[start : start + b],
            "candidates": feats[r].reshape(b, k * st.dim),
            "shown": np.zeros((b, k), np.float32),
            "action_mask": (r >= 0).astype(np.int8),
        }
        out[start : start + b] = policy.action_probs(obs)
    return out


__all__ = [
    "MAX_DIAGONAL_HEAD_DIM",
    "MAX_HEAD_DIM",
    "FitInfo",
    "agent_class",
    "candidate_rows",
    "check_eval_log",
    "check_learnable",
    "eval_split",
    "fit_policy",
    "fit_record_path",
    "load_fitted",
    "make_policy",
    "parse_params",
    "policy_probs",
    "read_log",
    "save_fitted",
    "split_log",
    "split_order",
    "store_for",
    "teach",
]
