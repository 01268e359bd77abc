"""Python clients of the rank/reward service: :class:`Client` (sync) and :class:`AsyncClient`.

Both hold one keep-alive connection pool (httpx) to a base URL, send the API key in the
``X-API-Key`` header, apply a timeout to every call, and turn an error response into an
:class:`APIError` that carries the HTTP status and the server's message. Replies come back as
small frozen dataclasses.

Example:
    >>> from copyloop.serve.client import Client
    >>> with Client("http://127.0.0.1:8000", api_key=key) as c:  # doctest: +SKIP
    ...     r = c.rank("p2687", context=[0.0] * 28)
    ...     c.reward(r.event_id, 1.0)
    RewardResult(event_id='...', status='accepted', late=False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx
import numpy as np
import numpy.typing as npt

from copyloop.serve.autopilot import Verdict
from copyloop.serve.policies import PolicyCandidate, PolicyVerdict

Mode = Literal["online", "shadow", "logging"]
Aggregation = Literal["earliest", "sum", "max"]
Variants = Sequence[str] | Mapping[str, str]
"""Lines of copy: texts (the server makes their ids) or ``{variant_id: text}``."""


class APIError(Exception):
    """The service refused a request (or failed on it).

    Attributes:
        status: the HTTP status (401 no or wrong key, 403 wrong scope, 404, 409, 413, 422, 5xx).
        message: the server's explanation, one line (validation errors joined with ``; ``).
        detail: the server's ``detail`` as sent (a string, or a list of validation errors).
        method: the request's method.
        path: the request's path.
    """

    def __init__(self, status: int, message: str, detail: Any, method: str, path: str) -> None:
        super().__init__(f"{method} {path} → {status}: {message}")
        self.status = status
        self.message = message
        self.detail = detail
        self.method = method
        self.path = path


@dataclass(frozen=True)
class AgentChoice:
    """In shadow mode, what the agent would have served, and its probabilities (in order)."""

    variant_id: str
    probabilities: list[float]


@dataclass(frozen=True)
class Ranking:
    """One decision: the served variant, every candidate's probability (candidate order), the
    model version that decided, the campaign's mode, and in shadow mode the agent's choice."""

    event_id: str
    variant_id: str
    probabilities: dict[str, float]
    model_version: str
    mode: str
    agent: AgentChoice | None = None

    @property
    def propensity(self) -> float:
        """The probability the served variant had."""
        return self.probabilities[self.variant_id]


@dataclass(frozen=True)
class RewardResult:
    """A posted reward: ``accepted`` (stored) or ``duplicate`` (that reward id was stored with
    the same value before); ``late`` if the event's window had closed (counted, not learned)."""

    event_id: str
    status: Literal["accepted", "duplicate"]
    late: bool


@dataclass(frozen=True)
class Campaign:
    """A campaign's settings, its active variant ids and its serving model version."""

    campaign_id: str
    context_width: int
    agent: str
    agent_params: dict[str, Any]
    mode: str
    exploration_floor: float
    reward_wait_s: float
    default_reward: float
    aggregation: str
    active_variants: list[str]
    model_version: str
    explore_share: float = 0.0
    candidates: list[str] = field(default_factory=list)
    control: str = ""


@dataclass(frozen=True)
class VariantSet:
    """One version of a campaign's variant set (see ``variant_sets``): the active variants,
    the candidates on trial, the control and exploration share, who changed it and why, and
    the model snapshot serving at the time."""

    version: int
    ts: float
    actor: str
    action: str
    active: list[str]
    candidates: list[str]
    control: str
    explore_share: float
    snapshot_version: int | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class Adoption:
    """An agent setting made the model's (see ``adopt_policy``): its snapshot, and the new
    variant-set version of each campaign sharing the model (where the change is recorded)."""

    snapshot_version: int
    variant_sets: list[int]


@dataclass(frozen=True)
class Stats:
    """A campaign's counters: decisions, joined/learned rows, default and late rewards, the mean
    joined reward (served CTR for clicks), decisions per served variant, model versions."""

    decisions: int
    joined: int
    learned: int
    default_rewards: int
    rewards: int
    late_rewards: int
    mean_joined_reward: float | None
    served: dict[str, int]
    model_version: str
    snapshot_version: int


@dataclass(frozen=True)
class Snapshot:
    """A published model snapshot of a campaign."""

    version: int
    model_version: str
    created: float
    rows_learned: int


@dataclass(frozen=True)
class Health:
    """``/healthz``: ``ok``, or ``degraded`` with the learner's last error."""

    status: str
    campaigns: int
    learner_error: str | None = None


# ---- requests and replies, shared by both clients ------------------------------------------------
@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    body: dict[str, Any] | None = None


def _seg(s: str) -> str:
    """One path segment (ids may hold '/', '?', spaces...)."""
    return quote(s, safe="")


def _floats(context: Sequence[float] | npt.NDArray[np.floating[Any]]) -> list[float]:
    if isinstance(context, np.ndarray):
        out: list[float] = context.astype(np.float64).ravel().tolist()
        return out
    return list(context)


def _variants(variants: Variants) -> list[dict[str, str]]:
    if isinstance(variants, str):
        raise TypeError("`variants` must be a list of texts or {variant_id: text}, not one str")
    if isinstance(variants, Mapping):
        return [{"variant_id": vid, "text": t} for vid, t in variants.items()]
    return [{"text": t} for t in variants]


def _rank_call(
    campaign_id: str,
    context: Sequence[float] | npt.NDArray[np.floating[Any]],
    candidate_ids: Sequence[str] | None,
    excluded_ids: Sequence[str] | None,
    event_id: str | None,
    user_id: str | None,
    defer_activation: bool,
) -> _Call:
    body: dict[str, Any] = {"campaign_id": campaign_id, "context": _floats(context)}
    if candidate_ids is not None:
        body["candidate_ids"] = list(candidate_ids)
    if excluded_ids:
        body["excluded_ids"] = list(excluded_ids)
    if event_id is not None:
        body["event_id"] = event_id
    if user_id is not None:
        body["user_id"] = user_id
    if defer_activation:
        body["defer_activation"] = True
    return _Call("POST", "/v1/rank", body)


def _reward_call(event_id: str, value: float, reward_id: str) -> _Call:
    return _Call(
        "POST",
        f"/v1/events/{_seg(event_id)}/reward",
        {"value": value, "reward_id": reward_id},
    )


def _campaign_body(
    campaign_id: str,
    context_width: int,
    agent: str,
    agent_params: Mapping[str, float | int | str | bool | None] | None,
    mode: Mode,
    exploration_floor: float,
    reward_wait_s: float,
    default_reward: float,
    aggregation: Aggregation,
    variants: Variants,
) -> dict[str, Any]:
    return {
        "campaign_id": campaign_id,
        "context_width": context_width,
        "agent": agent,
        "agent_params": dict(agent_params or {}),
        "mode": mode,
        "exploration_floor": exploration_floor,
        "reward_wait_s": reward_wait_s,
        "default_reward": default_reward,
        "aggregation": aggregation,
        "variants": _variants(variants),
    }


def _patch_body(**given: Any) -> dict[str, Any]:
    body = {k: v for k, v in given.items() if v is not None}
    if not body:
        raise ValueError(f"update_campaign needs at least one of {', '.join(given)}")
    return body


def _candidates_call(campaign_id: str, variants: Variants) -> _Call:
    path = f"/v1/admin/campaigns/{_seg(campaign_id)}/candidates"
    return _Call("POST", path, {"variants": _variants(variants)})


def _settle_call(
    campaign_id: str, variant_id: str, promote: bool, evidence: Mapping[str, Any] | None
) -> _Call:
    verdict = "promote" if promote else "reject"
    path = f"/v1/admin/campaigns/{_seg(campaign_id)}/candidates/{_seg(variant_id)}/{verdict}"
    return _Call("POST", path, {"evidence": dict(evidence or {})})


def _judge_call(campaign_id: str, settings: Mapping[str, Any]) -> _Call:
    return _Call("POST", f"/v1/admin/campaigns/{_seg(campaign_id)}/judge", dict(settings))


def _policy_body(p: str | Mapping[str, Any]) -> dict[str, Any]:
    """``"logistic_ts:alpha=0.5"`` (checked and typed here) or ``{"agent": …, "params": …}``."""
    if isinstance(p, str):
        c = PolicyCandidate.parse(p)
        p = {"agent": c.agent, "params": dict(c.params)}
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in p.get("params", {}).items()}
    return {"agent": p["agent"], "params": params}


def _judge_policies_call(
    campaign_id: str, policies: Sequence[str | Mapping[str, Any]], settings: Mapping[str, Any]
) -> _Call:
    path = f"/v1/admin/campaigns/{_seg(campaign_id)}/policies/judge"
    return _Call("POST", path, {"policies": [_policy_body(p) for p in policies], **settings})


def _adopt_call(
    campaign_id: str, policy: str | Mapping[str, Any], evidence: Mapping[str, Any] | None
) -> _Call:
    body = _policy_body(policy) | {"evidence": dict(evidence or {})}
    return _Call("POST", f"/v1/admin/campaigns/{_seg(campaign_id)}/policy", body)


def _policy_verdicts(d: Sequence[Mapping[str, Any]]) -> list[PolicyVerdict]:
    return [PolicyVerdict(**v) for v in d]


def _adoption(d: Mapping[str, Any]) -> Adoption:
    return Adoption(int(d["snapshot_version"]), [int(v) for v in d["variant_sets"]])


def _verdicts(campaign_id: str, d: Sequence[Mapping[str, Any]]) -> list[Verdict]:
    return [Verdict(campaign_id=campaign_id, **v) for v in d]


def _variant_set(d: Mapping[str, Any]) -> VariantSet:
    return VariantSet(**{k: d[k] for k in VariantSet.__dataclass_fields__})


def _message(detail: Any) -> str:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for e in detail:
            if isinstance(e, Mapping):
                loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
                parts.append(f"{loc}: {e.get('msg', '')}" if loc else str(e.get("msg", "")))
            else:
                parts.append(str(e))
        return "; ".join(parts)
    return str(detail)


def _check(resp: httpx.Response, call: _Call) -> Any:
    """The reply's JSON, or an :class:`APIError` for a status of 400 and above."""
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", resp.text)
        except (ValueError, AttributeError):
            detail = resp.text
        raise APIError(resp.status_code, _message(detail), detail, call.method, call.path)
    return resp.json()


def _ranking(d: Mapping[str, Any]) -> Ranking:
    a = d.get("agent")
    return Ranking(
        event_id=d["event_id"],
        variant_id=d["variant_id"],
        probabilities={str(k): float(v) for k, v in d["probabilities"].items()},
        model_version=d["model_version"],
        mode=d["mode"],
        agent=None if a is None else AgentChoice(a["variant_id"], list(a["probabilities"])),
    )


def _campaign(d: Mapping[str, Any]) -> Campaign:
    return Campaign(**{k: d[k] for k in Campaign.__dataclass_fields__})


def _stats(d: Mapping[str, Any]) -> Stats:
    return Stats(**{k: d[k] for k in Stats.__dataclass_fields__})


def _snapshots(d: Sequence[Mapping[str, Any]]) -> list[Snapshot]:
    return [Snapshot(**{k: s[k] for k in Snapshot.__dataclass_fields__}) for s in d]


def _headers(api_key: str | None) -> dict[str, str]:
    return {} if api_key is None else {"X-API-Key": api_key}


def _limits(max_connections: int) -> httpx.Limits:
    if max_connections < 1:
        raise ValueError(f"`max_connections` must be >= 1, got {max_connections}")
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


# ---- the sync client ---------------------------------------------------------------------------
class Client:
    """A synchronous client of ``copyloop serve``; thread-safe (httpx's pool), keep-alive.

    Args:
        base_url: the service, e.g. ``http://127.0.0.1:8000``.
        api_key: a key from ``copyloop keys create`` (client scope for rank/reward/activate,
            admin for everything); None for ``health`` only.
        timeout: seconds for connect, read, write and pool waits (or an ``httpx.Timeout``).
        max_connections: size of the keep-alive pool (one per concurrent caller thread).
        transport: an httpx transport to use instead of the network (tests).

    Raises (from every call):
        APIError: the service answered 4xx/5xx; ``status`` and ``message`` say why.
        httpx.TransportError: no answer (connection refused, timeout, ...).

    Example:
        >>> with Client("http://127.0.0.1:8000", api_key=admin_key) as c:  # doctest: +SKIP
        ...     c.create_campaign("spring", context_width=3,
        ...                       variants={"a": "Shop the sale", "b": "Free shipping"})
        ...     r = c.rank("spring", [1.0, 0.0, 0.5])
        ...     c.reward(r.event_id, 1.0 if r.variant_id == "a" else 0.0)
        ...     c.stats("spring").decisions
        1
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 10.0,
        max_connections: int = 16,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self._http = httpx.Client(
            base_url=base_url,
            headers=_headers(api_key),
            timeout=timeout,
            limits=_limits(max_connections),
            transport=transport,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _do(self, call: _Call) -> Any:
        resp = self._http.request(call.method, call.path, json=call.body)
        return _check(resp, call)

    # client scope
    def rank(
        self,
        campaign_id: str,
        context: Sequence[float] | npt.NDArray[np.floating[Any]],
        *,
        candidate_ids: Sequence[str] | None = None,
        excluded_ids: Sequence[str] | None = None,
        event_id: str | None = None,
        user_id: str | None = None,
        defer_activation: bool = False,
    ) -> Ranking:
        """Choose a variant for one request (``POST /v1/rank``); durable when it returns.

        Args:
            campaign_id: the campaign.
            context: the campaign's ``context_width`` numbers, (d,).
            candidate_ids: the candidates (default: the campaign's active variants).
            excluded_ids: candidates to leave out.
            event_id: the event's id (default: generated by the server); reusing one is 409.
            user_id: stored with the decision.
            defer_activation: the impression may not be shown; call :meth:`activate` if it is
                (never activated → never learned).
        """
        return _ranking(
            self._do(
                _rank_call(
                    campaign_id,
                    context,
                    candidate_ids,
                    excluded_ids,
                    event_id,
                    user_id,
                    defer_activation,
                )
            )
        )

    def reward(self, event_id: str, value: float, *, reward_id: str = "") -> RewardResult:
        """Report a reward of an event (``POST /v1/events/{id}/reward``); idempotent per
        ``(event_id, reward_id)`` — the same id with another value is a 409."""
        d = self._do(_reward_call(event_id, value, reward_id))
        return RewardResult(d["event_id"], d["status"], bool(d["late"]))

    def activate(self, event_id: str) -> None:
        """Mark a deferred impression as shown (409 once the event is joined)."""
        self._do(_Call("POST", f"/v1/events/{_seg(event_id)}/activate"))

    def health(self) -> Health:
        """``GET /healthz`` (no key needed)."""
        d = self._do(_Call("GET", "/healthz"))
        return Health(d["status"], d["campaigns"], d.get("learner_error"))

    # admin scope
    def create_campaign(
        self,
        campaign_id: str,
        context_width: int,
        *,
        agent: str = "linear_ts",
        agent_params: Mapping[str, float | int | str | bool | None] | None = None,
        mode: Mode = "online",
        exploration_floor: float = 0.0,
        reward_wait_s: float = 60.0,
        default_reward: float = 0.0,
        aggregation: Aggregation = "earliest",
        variants: Variants = (),
    ) -> Campaign:
        """Create a campaign (409 if it exists); ``variants`` are texts or ``{id: text}``,
        featurized by the server's saved featurizer."""
        body = _campaign_body(
            campaign_id,
            context_width,
            agent,
            agent_params,
            mode,
            exploration_floor,
            reward_wait_s,
            default_reward,
            aggregation,
            variants,
        )
        return _campaign(self._do(_Call("POST", "/v1/admin/campaigns", body)))

    def update_campaign(
        self,
        campaign_id: str,
        *,
        mode: Mode | None = None,
        exploration_floor: float | None = None,
        reward_wait_s: float | None = None,
        default_reward: float | None = None,
        aggregation: Aggregation | None = None,
        explore_share: float | None = None,
        control: str | None = None,
    ) -> Campaign:
        """Change a campaign's settings (only those given; ``control=""`` removes the
        control)."""
        body = _patch_body(
            mode=mode,
            exploration_floor=exploration_floor,
            reward_wait_s=reward_wait_s,
            default_reward=default_reward,
            aggregation=aggregation,
            explore_share=explore_share,
            control=control,
        )
        call = _Call("PATCH", f"/v1/admin/campaigns/{_seg(campaign_id)}", body)
        return _campaign(self._do(call))

    def campaigns(self) -> list[Campaign]:
        """Every campaign."""
        return [_campaign(d) for d in self._do(_Call("GET", "/v1/admin/campaigns"))]

    def add_variants(self, campaign_id: str, variants: Variants) -> list[str]:
        """Add lines of copy to a campaign; returns their ids."""
        call = _Call(
            "POST",
            f"/v1/admin/campaigns/{_seg(campaign_id)}/variants",
            {"variants": _variants(variants)},
        )
        return list(self._do(call)["variant_ids"])

    def retire_variant(self, campaign_id: str, variant_id: str) -> None:
        """Stop serving a variant (its past decisions stay in the log)."""
        path = f"/v1/admin/campaigns/{_seg(campaign_id)}/variants/{_seg(variant_id)}/retire"
        self._do(_Call("POST", path))

    def stats(self, campaign_id: str) -> Stats:
        """A campaign's counters."""
        return _stats(self._do(_Call("GET", f"/v1/admin/campaigns/{_seg(campaign_id)}/stats")))

    def models(self, campaign_id: str) -> list[Snapshot]:
        """A campaign's published snapshots, oldest first."""
        call = _Call("GET", f"/v1/admin/campaigns/{_seg(campaign_id)}/models")
        return _snapshots(self._do(call))

    def add_candidates(self, campaign_id: str, variants: Variants) -> list[str]:
        """New copy on trial: served only through the campaign's exploration slice
        (``explore_share``) until promoted or rejected; returns the ids."""
        return list(self._do(_candidates_call(campaign_id, variants))["variant_ids"])

    def settle_candidate(
        self,
        campaign_id: str,
        variant_id: str,
        promote: bool,
        evidence: Mapping[str, Any] | None = None,
    ) -> VariantSet:
        """Promote a candidate into the active set or reject it, with the evidence (kept in
        the audit log); returns the new variant set."""
        return _variant_set(self._do(_settle_call(campaign_id, variant_id, promote, evidence)))

    def judge(self, campaign_id: str, **settings: Any) -> list[Verdict]:
        """The gate's verdict on each candidate on trial (``alpha``, ``min_impressions``,
        ``max_impressions``, ``estimator``; see ``GateSettings``); changes nothing."""
        return _verdicts(campaign_id, self._do(_judge_call(campaign_id, settings)))

    def judge_policies(
        self, campaign_id: str, policies: Sequence[str | Mapping[str, Any]], **settings: Any
    ) -> list[PolicyVerdict]:
        """Each candidate agent setting (``"logistic_ts:alpha=0.5"`` or ``{"agent", "params"}``)
        judged against the campaign's model on its own log (``alpha``, ``warm``, ``chunks``,
        ``min_rows``; see ``copyloop.serve.policies``); changes nothing."""
        return _policy_verdicts(self._do(_judge_policies_call(campaign_id, policies, settings)))

    def adopt_policy(
        self,
        campaign_id: str,
        policy: str | Mapping[str, Any],
        evidence: Mapping[str, Any] | None = None,
    ) -> Adoption:
        """Serve and learn with another agent setting (it first learns every row the model
        has learned), with the evidence kept in the audit log; send it to the learner."""
        return _adoption(self._do(_adopt_call(campaign_id, policy, evidence)))

    def variant_sets(self, campaign_id: str) -> list[VariantSet]:
        """Every version of the campaign's variant set, oldest first."""
        call = _Call("GET", f"/v1/admin/campaigns/{_seg(campaign_id)}/variant-sets")
        return [_variant_set(d) for d in self._do(call)]

    def rollback(self, campaign_id: str, variant_set: int) -> VariantSet:
        """Restore variant set ``variant_set`` and the model snapshot it served with (both
        saved as new versions); send it to the learner process."""
        path = f"/v1/admin/campaigns/{_seg(campaign_id)}/rollback"
        return _variant_set(self._do(_Call("POST", path, {"variant_set": variant_set})))


# ---- the async client --------------------------------------------------------------------------
class AsyncClient:
    """The asyncio twin of :class:`Client` (same arguments and methods, awaited).

    Args:
        base_url: the service, e.g. ``http://127.0.0.1:8000``.
        api_key: a key from ``copyloop keys create``; None for ``health`` only.
        timeout: seconds for connect, read, write and pool waits (or an ``httpx.Timeout``).
        max_connections: size of the keep-alive pool (concurrent requests in flight).
        transport: an httpx transport instead of the network (e.g. ``httpx.ASGITransport(app)``).

    Example:
        >>> async with AsyncClient("http://127.0.0.1:8000", api_key=key) as c:  # doctest: +SKIP
        ...     rs = await asyncio.gather(*(c.rank("spring", [0.0, 1.0, 0.5]) for _ in range(8)))
        ...     await c.reward(rs[0].event_id, 1.0)
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 10.0,
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=_headers(api_key),
            timeout=timeout,
            limits=_limits(max_connections),
            transport=transport,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _do(self, call: _Call) -> Any:
        resp = await self._http.request(call.method, call.path, json=call.body)
        return _check(resp, call)

    async def rank(
        self,
        campaign_id: str,
        context: Sequence[float] | npt.NDArray[np.floating[Any]],
        *,
        candidate_ids: Sequence[str] | None = None,
        excluded_ids: Sequence[str] | None = None,
        event_id: str | None = None,
        user_id: str | None = None,
        defer_activation: bool = False,
    ) -> Ranking:
        """See :meth:`Client.rank`."""
        call = _rank_call(
            campaign_id, context, candidate_ids, excluded_ids, event_id, user_id, defer_activation
        )
        return _ranking(await self._do(call))

    async def reward(self, event_id: str, value: float, *, reward_id: str = "") -> RewardResult:
        """See :meth:`Client.reward`."""
        d = await self._do(_reward_call(event_id, value, reward_id))
        return RewardResult(d["event_id"], d["status"], bool(d["late"]))

    async def activate(self, event_id: str) -> None:
        """See :meth:`Client.activate`."""
        await self._do(_Call("POST", f"/v1/events/{_seg(event_id)}/activate"))

    async def health(self) -> Health:
        """See :meth:`Client.health`."""
        d = await self._do(_Call("GET", "/healthz"))
        return Health(d["status"], d["campaigns"], d.get("learner_error"))

    async def create_campaign(
        self,
        campaign_id: str,
        context_width: int,
        *,
        agent: str = "linear_ts",
        agent_params: Mapping[str, float | int | str | bool | None] | None = None,
        mode: Mode = "online",
        exploration_floor: float = 0.0,
        reward_wait_s: float = 60.0,
        default_reward: float = 0.0,
        aggregation: Aggregation = "earliest",
        variants: Variants = (),
    ) -> Campaign:
        """See :meth:`Client.create_campaign`."""
        body = _campaign_body(
            campaign_id,
            context_width,
            agent,
            agent_params,
            mode,
            exploration_floor,
            reward_wait_s,
            default_reward,
            aggregation,
            variants,
        )
        return _campaign(await self._do(_Call("POST", "/v1/admin/campaigns", body)))

    async def update_campaign(
        self,
        campaign_id: str,
        *,
        mode: Mode | None = None,
        exploration_floor: float | None = None,
        reward_wait_s: float | None = None,
        default_reward: float | None = None,
        aggregation: Aggregation | None = None,
        explore_share: float | None = None,
        control: str | None = None,
    ) -> Campaign:
        """See :meth:`Client.update_campaign`."""
        body = _patch_body(
            mode=mode,
            exploration_floor=exploration_floor,
            reward_wait_s=reward_wait_s,
            default_reward=default_reward,
            aggregation=aggregation,
            explore_share=explore_share,
            control=control,
        )
        call = _Call("PATCH", f"/v1/admin/campaigns/{_seg(campaign_id)}", body)
        return _campaign(await self._do(call))

    async def campaigns(self) -> list[Campaign]:
        """See :meth:`Client.campaigns`."""
        return [_campaign(d) for d in await self._do(_Call("GET", "/v1/admin/campaigns"))]

    async def add_variants(self, campaign_id: str, variants: Variants) -> list[str]:
        """See :meth:`Client.add_variants`."""
        call = _Call(
            "POST",
            f"/v1/admin/campaigns/{_seg(campaign_id)}/variants",
            {"variants": _variants(variants)},
        )
        return list((await self._do(call))["variant_ids"])

    async def retire_variant(self, campaign_id: str, variant_id: str) -> None:
        """See :meth:`Client.retire_variant`."""
        path = f"/v1/admin/campaigns/{_seg(campaign_id)}/variants/{_seg(variant_id)}/retire"
        await self._do(_Call("POST", path))

    async def stats(self, campaign_id: str) -> Stats:
        """See :meth:`Client.stats`."""
        call = _Call("GET", f"/v1/admin/campaigns/{_seg(campaign_id)}/stats")
        return _stats(await self._do(call))

    async def models(self, campaign_id: str) -> list[Snapshot]:
        """See :meth:`Client.models`."""
        call = _Call("GET", f"/v1/admin/campaigns/{_seg(campaign_id)}/models")
        return _snapshots(await self._do(call))

    async def add_candidates(self, campaign_id: str, variants: Variants) -> list[str]:
        """See :meth:`Client.add_candidates`."""
        return list((await self._do(_candidates_call(campaign_id, variants)))["variant_ids"])

    async def settle_candidate(
        self,
        campaign_id: str,
        variant_id: str,
        promote: bool,
        evidence: Mapping[str, Any] | None = None,
    ) -> VariantSet:
        """See :meth:`Client.settle_candidate`."""
        call = _settle_call(campaign_id, variant_id, promote, evidence)
        return _variant_set(await self._do(call))

    async def judge(self, campaign_id: str, **settings: Any) -> list[Verdict]:
        """See :meth:`Client.judge`."""
        return _verdicts(campaign_id, await self._do(_judge_call(campaign_id, settings)))

    async def judge_policies(
        self, campaign_id: str, policies: Sequence[str | Mapping[str, Any]], **settings: Any
    ) -> list[PolicyVerdict]:
        """See :meth:`Client.judge_policies`."""
        call = _judge_policies_call(campaign_id, policies, settings)
        return _policy_verdicts(await self._do(call))

    async def adopt_policy(
        self,
        campaign_id: str,
        policy: str | Mapping[str, Any],
        evidence: Mapping[str, Any] | None = None,
    ) -> Adoption:
        """See :meth:`Client.adopt_policy`."""
        return _adoption(await self._do(_adopt_call(campaign_id, policy, evidence)))

    async def variant_sets(self, campaign_id: str) -> list[VariantSet]:
        """See :meth:`Client.variant_sets`."""
        call = _Call("GET", f"/v1/admin/campaigns/{_seg(campaign_id)}/variant-sets")
        return [_variant_set(d) for d in await self._do(call)]

    async def rollback(self, campaign_id: str, variant_set: int) -> VariantSet:
        """See :meth:`Client.rollback`."""
        path = f"/v1/admin/campaigns/{_seg(campaign_id)}/rollback"
        return _variant_set(await self._do(_Call("POST", path, {"variant_set": variant_set})))


__all__ = [
    "APIError",
    "Adoption",
    "AgentChoice",
    "AsyncClient",
    "Campaign",
    "Client",
    "Health",
    "Ranking",
    "RewardResult",
    "Snapshot",
    "Stats",
    "VariantSet",
    "Verdict",
]
