"""The HTTP API (FastAPI): ``create_app(config)`` builds one service per app.

The store and the caller's key arrive through dependencies, startup and shutdown happen in the
lifespan, request and response bodies are strict pydantic models (the OpenAPI schema at
``/openapi.json`` is the contract), and nothing is kept at module level.

Example:
    >>> app = create_app(ServiceConfig(store="sqlite:///s.db", featurizer=feat))  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from copyloop.serve.service import Service, ServiceConfig, ServiceError
from copyloop.serve.store import CampaignConfig

Finite = Annotated[float, Field(allow_inf_nan=False)]
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^/]+$")]
"""An id that may appear in a URL path segment (percent-encoded): anything but ``/``."""


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def _unique(v: list[str] | None, what: str) -> list[str] | None:
    if v is not None and len(set(v)) != len(v):
        dup = sorted({x for x in v if v.count(x) > 1})[:5]
        raise ValueError(f"`{what}` repeats {dup} — each id once")
    return v


class RankRequest(Strict):
    campaign_id: Id
    context: list[Finite] = Field(min_length=1, max_length=4096)
    candidate_ids: list[Id] | None = Field(default=None, min_length=1, max_length=1000)
    excluded_ids: list[Id] = Field(default_factory=list, max_length=1000)
    event_id: Id | None = None
    user_id: Id | None = None
    defer_activation: bool = False

    @field_validator("candidate_ids")
    @classmethod
    def _candidates_unique(cls, v: list[str] | None) -> list[str] | None:
        return _unique(v, "candidate_ids")


class AgentChoice(Strict):
    variant_id: str
    probabilities: list[float]


class RankResponse(Strict):
    event_id: str
    variant_id: str
    probabilities: dict[str, float]
    model_version: str
    mode: str
    agent: AgentChoice | None = None


class RewardRequest(Strict):
    value: Finite
    reward_id: Annotated[str, Field(max_length=128)] = ""


class RewardResponse(Strict):
    event_id: str
    status: Literal["accepted", "duplicate"]
    late: bool


class ErrorOut(BaseModel):
    """Every refusal other than a 422: what was wrong, in words."""

    detail: str


_ERR = {"model": ErrorOut}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {**_ERR, "description": "No API key, or an unknown or revoked one"},
    403: {**_ERR, "description": "The key lacks the scope (an admin route with a client key)"},
    404: {**_ERR, "description": "No such campaign, variant or event"},
    409: {**_ERR, "description": "A conflict: the id exists, or the event is already joined"},
    413: {**_ERR, "description": "The body is above the size limit"},
}
"""The statuses every /v1 route may answer besides its own and 422 (declared in OpenAPI)."""


class Ok(Strict):
    ok: bool = True


class VariantIn(Strict):
    text: Annotated[str, Field(min_length=1, max_length=2000)]
    variant_id: Id | None = None


class CampaignIn(Strict):
    campaign_id: Id
    context_width: Annotated[int, Field(ge=1, le=4096)]
    agent: str = "linear_ts"
    agent_params: dict[str, float | int | str | bool | None] = Field(default_factory=dict)
    mode: Literal["online", "shadow", "logging"] = "online"
    exploration_floor: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    reward_wait_s: Annotated[float, Field(gt=0.0, le=7 * 86400)] = 60.0
    default_reward: Finite = 0.0
    aggregation: Literal["earliest", "sum", "max"] = "earliest"
    model_id: Annotated[str, Field(max_length=128)] = ""
    explore_share: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    control: Annotated[str, Field(max_length=128)] = ""
    variants: list[VariantIn] = Field(default_factory=list, max_length=1000)


class CampaignPatch(Strict):
    mode: Literal["online", "shadow", "logging"] | None = None
    exploration_floor: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    reward_wait_s: Annotated[float, Field(gt=0.0, le=7 * 86400)] | None = None
    default_reward: Finite | None = None
    aggregation: Literal["earliest", "sum", "max"] | None = None
    explore_share: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    control: Annotated[str, Field(max_length=128)] | None = None


class CampaignOut(Strict):
    campaign_id: str
    context_width: int
    agent: str
    agent_params: dict[str, Any]
    mode: str
    exploration_floor: float
    reward_wait_s: float
    default_reward: float
    aggregation: str
    model_id: str
    active_variants: list[str]
    model_version: str
    explore_share: float
    candidates: list[str]
    control: str


class VariantsIn(Strict):
    variants: list[VariantIn] = Field(min_length=1, max_length=1000)


class VariantsOut(Strict):
    variant_ids: list[str]


class SettleIn(Strict):
    """Why a candidate is promoted or rejected (the gate's numbers), kept in the audit log."""

    evidence: dict[str, Any] = Field(default_factory=dict)


class JudgeIn(Strict):
    """The gate's settings (see ``copyloop.serve.autopilot.GateSettings``)."""

    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    min_impressions: Annotated[int, Field(ge=10)] = 500
    max_impressions: Annotated[int, Field(ge=10)] = 16_000


class VerdictOut(Strict):
    variant_id: str
    action: Literal["promote", "reject", "wait"]
    impressions: int
    look: int | None
    rows: int
    candidate: dict[str, float | None] | None
    incumbent: dict[str, float | None] | None
    alpha: float | None
    reason: str


class PolicyIn(Strict):
    """An agent setting: a kind of ``copyloop.agents.POLICIES`` and its constructor arguments."""

    agent: Annotated[str, Field(min_length=1, max_length=64)]
    params: dict[str, Any] = {}


class JudgePoliciesIn(Strict):
    """Candidate agent settings and the gate's settings (``copyloop.serve.policies``)."""

    policies: Annotated[list[PolicyIn], Field(min_length=1, max_length=16)]
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    warm: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    chunks: Annotated[int, Field(ge=1, le=64)] = 4
    min_rows: Annotated[int, Field(ge=10)] = 2000


class PolicyVerdictOut(Strict):
    model_id: str
    candidate: str
    agent: str
    params: dict[str, Any]
    action: Literal["promote", "hold"]
    rows: int
    candidate_estimate: float | None
    online_estimate: float | None
    difference: float | None
    lower: float | None
    upper: float | None
    alpha: float | None
    ess: float | None
    reason: str


class AdoptIn(Strict):
    """The agent setting to serve from now on, and the evidence for the audit log."""

    agent: Annotated[str, Field(min_length=1, max_length=64)]
    params: dict[str, Any] = {}
    evidence: dict[str, Any] = {}


class AdoptOut(Strict):
    snapshot_version: int
    variant_sets: list[int]


class RollbackIn(Strict):
    variant_set: Annotated[int, Field(ge=1)]


class VariantSetOut(Strict):
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


class StatsOut(Strict):
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


class SnapshotOut(Strict):
    version: int
    model_version: str
    created: float
    rows_learned: int


class Health(Strict):
    status: Literal["ok", "degraded"]
    campaigns: int
    learner_error: str | None = None
    role: str = "all"


# ---- dependencies -----------------------------------------------------------------------------
# Both are coroutines: FastAPI runs a plain-def dependency in a worker thread, a hop that cost
# more than the whole decision on the request path.
async def get_service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


def require(scope: Literal["client", "admin"]) -> Callable[..., Awaitable[str]]:
    """A dependency: the caller's ``X-API-Key`` must hold ``scope`` (admin keys hold both)."""

    async def check(
        svc: Annotated[Service, Depends(get_service)],
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> str:
        return await authorize(svc, x_api_key, scope)

    return check


async def authorize(svc: Service, key: str | None, scope: Literal["client", "admin"]) -> str:
    """The caller's identity (``key:<id>``) if ``key`` holds ``scope``; else 401 / 403."""
    if not key:
        raise ServiceError(401, "missing X-API-Key header")
    got = svc.cached_scope(key)
    if got is None:  # not verified lately: the salted hash is slow, off the event loop
        got = await run_in_threadpool(svc.scope_of, key)
    if got is None:
        raise ServiceError(401, "unknown or revoked API key")
    if scope == "admin" and got != "admin":
        raise ServiceError(403, f"this endpoint needs an admin key; yours is {got!r}")
    return f"key:{key.split('_')[1] if '_' in key else '?'}"


SvcDep = Annotated[Service, Depends(get_service)]
ApiKey = Annotated[str | None, Header()]
Client = Annotated[str, Depends(require("client"))]
Admin = Annotated[str, Depends(require("admin"))]


# ---- the hot routes -----------------------------------------------------------------------------
def _is_json(content_type: str | None) -> bool:
    """FastAPI's test for a JSON body (``application/json`` or ``application/*+json``)."""
    if not content_type:
        return False
    kind = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = kind.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def parse_body(model: type[BaseModel], raw: bytes, content_type: str | None) -> Any:
    """``raw`` validated as ``model`` in one pass (pydantic parses the JSON itself), or a
    :class:`RequestValidationError` located under ``body`` as FastAPI words it."""
    try:
        if not raw:
            raise RequestValidationError(
                [{"type": "missing", "loc": ("body",), "msg": "Field required"}]
            )
        if not _is_json(content_type):  # FastAPI's strict content type: the bytes, not JSON
            return model.model_validate(raw)
        return model.model_validate_json(raw)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in errors]
        ) from None


class HotRoute(APIRoute):
    """A route whose endpoint is ``endpoint(request, body, **path_params)``: FastAPI builds its
    OpenAPI operation from the signature as for any route (body model, header, path
    parameters, response model, 422), but a request skips FastAPI's per-request dependency
    resolution and its JSON decode-then-validate (about 100 µs of event-loop CPU per
    rank+reward pair, measured in-process with the service stubbed: 243 → 139 µs). The body is
    validated by :func:`parse_body` against the same strict model; path parameters must be
    plain ``str``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        assert self.body_field is not None, "a HotRoute takes a JSON body"
        model = cast(type[BaseModel], self.body_field.field_info.annotation)
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            raw = await request.body()
            body = parse_body(model, raw, request.headers.get("content-type"))
            response: Response = await endpoint(request, body, **request.path_params)
            return response

        return handler


# ---- middleware (pure ASGI: no per-request task overhead) --------------------------------------
class _TooLarge(Exception):
    pass


class BodyLimitAndTiming:
    """413 for bodies above ``limit`` bytes (declared or streamed); 401 for a /v1 request
    without a valid API key, before its body is read or validated; latency per endpoint.
    (Routes still check the key's scope: an admin route with a client key is a 403.)"""

    def __init__(self, app: Any, limit: int, observe: Callable[[str, str, float], None]) -> None:
        self.app, self.limit, self.observe = app, limit, observe

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        key = None
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.limit:
                await _send_error(send, 413, f"request body above {self.limit} bytes")
                return
            if k == b"x-api-key":
                key = v.decode("latin-1")
        if scope.get("path", "").startswith("/v1/"):
            try:
                await authorize(scope["app"].state.service, key, "client")
            except ServiceError as e:
                await _send_error(send, e.status, e.message)
                return
        seen = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return msg

        async def tracking_send(msg: Any) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_error(send, 413, f"request body above {self.limit} bytes")
        finally:
            ep = scope.get("endpoint")
            name = getattr(ep, "__name__", "other")
            self.observe(name, scope["method"], time.perf_counter() - t0)


async def _send_error(send: Callable[[Any], Awaitable[None]], status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ---- the app ----------------------------------------------------------------------------------
def _campaign_out(svc: Service, campaign_id: str) -> CampaignOut:
    rt = svc.runtime(campaign_id)
    c = rt.cfg
    return CampaignOut(
        campaign_id=c.campaign_id,
        context_width=c.context_width,
        agent=c.agent,
        agent_params=dict(c.agent_params),
        mode=c.mode,
        exploration_floor=c.exploration_floor,
        reward_wait_s=c.reward_wait_s,
        default_reward=c.default_reward,
        aggregation=c.aggregation,
        model_id=rt.model.model_id,
        active_variants=list(rt.active),
        model_version=rt.policy.model_version,
        explore_share=c.explore_share,
        candidates=list(c.candidates),
        control=c.control,
    )


def _variant_set_out(r: Any) -> VariantSetOut:
    return VariantSetOut(
        version=r.version,
        ts=r.ts,
        actor=r.actor,
        action=r.action,
        active=r.active,
        candidates=list(r.config.candidates),
        control=r.config.control,
        explore_share=r.config.explore_share,
        snapshot_version=r.snapshot_version,
        detail=r.detail,
    )


async def rank_json(svc: Service, body: RankRequest) -> bytes:
    """Decide for ``body`` and wait until the decision is durable; the response's JSON."""
    rec, agent = await svc.rank(
        body.campaign_id,
        body.context,
        body.candidate_ids,
        body.excluded_ids,
        body.event_id,
        body.defer_activation,
        body.user_id,
    )
    out = {
        "event_id": rec.event_id,
        "variant_id": rec.action,
        "probabilities": dict(zip(rec.candidates, rec.action_probs, strict=True)),
        "model_version": rec.model_version,
        "mode": rec.mode,
        "agent": agent,
    }
    return _dumps(out).encode()


async def reward_json(svc: Service, event_id: str, body: RewardRequest) -> bytes:
    """Store ``body`` as a reward of ``event_id`` (durable before it returns); the response's
    JSON."""
    out = await svc.reward(event_id, body.reward_id, body.value)
    status = "duplicate" if out.status == "duplicate" else "accepted"
    return _dumps({"event_id": event_id, "status": status, "late": out.late}).encode()


_dumps = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_JSON_HEADERS = (b"content-type", b"application/json")


def _error_json(exc: Exception) -> tuple[int, bytes]:
    """The status and body the app's exception handlers give ``exc`` (a validation error or a
    :class:`ServiceError`) — one wording for the fast path and the routes."""
    if isinstance(exc, RequestValidationError):
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return 422, json.dumps({"detail": errors}).encode()
    assert isinstance(exc, ServiceError)
    if exc.status == 422:  # the declared 422 body: a list of errors with where and what
        err = {"loc": ["body", *exc.loc], "msg": exc.message, "type": "value_error"}
        return 422, json.dumps({"detail": [err]}).encode()
    return exc.status, json.dumps({"detail": exc.message}).encode()


class ServiceApp(FastAPI):
    """The service's FastAPI app, with its two hot routes also served straight from ASGI.

    ``POST /v1/rank`` and ``POST /v1/events/{event_id}/reward`` are most of the traffic; on
    this 2-core machine FastAPI's and Starlette's per-request layers (middleware stack,
    exception wrappers, routing, Request and Response objects) cost more event-loop CPU than
    the rest of the request path besides the decision. So :meth:`__call__` answers those two
    itself — the same key check, body limit, strict model validation, service calls, response
    and error bodies and latency histogram as the routes, which stay registered: they are the
    documented (OpenAPI) and fuzz-tested contract, and they serve what the fast path leaves
    (another method, a ``root_path``, a trailing slash). Every other request goes to FastAPI.
    """

    max_body_bytes: int = 1 << 20
    hot_paths: bool = True
    """Serve rank and reward on the fast path (False: through FastAPI's routes — tests compare
    the two)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            self.hot_paths
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and not scope.get("root_path")
        ):
            path: str = scope["path"]
            if path == "/v1/rank":
                await self._hot(scope, receive, send, "rank", None)
                return
            if path.startswith("/v1/events/") and path.endswith("/reward"):
                event_id = path[11:-7]
                if event_id and "/" not in event_id:
                    await self._hot(scope, receive, send, "reward", event_id)
                    return
        await super().__call__(scope, receive, send)

    async def _hot(
        self, scope: Any, receive: Any, send: Any, endpoint: str, event_id: str | None
    ) -> None:
        t0 = time.perf_counter()
        svc: Service | None = getattr(self.state, "service", None)
        started = False

        async def respond(status: int, body: bytes) -> None:
            nonlocal started
            started = True
            headers = [_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        try:
            if svc is None:  # not started (no lifespan): what FastAPI's dependency would raise
                raise RuntimeError("the service is not started (the app's lifespan did not run)")
            limit = self.max_body_bytes
            key = ctype = None
            for k, v in scope["headers"]:
                if k == b"content-length" and v.isdigit() and int(v) > limit:
                    raise ServiceError(413, f"request body above {limit} bytes")
                if k == b"x-api-key":
                    key = v.decode("latin-1")
                elif k == b"content-type":
                    ctype = v.decode("latin-1")
            await authorize(svc, key, "client")
            raw = b""
            more = True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                raw += msg.get("body", b"")
                more = msg.get("more_body", False)
                if len(raw) > limit:
                    raise ServiceError(413, f"request body above {limit} bytes")
            if event_id is None:
                out = await rank_json(svc, parse_body(RankRequest, raw, ctype))
            else:
                out = await reward_json(svc, event_id, parse_body(RewardRequest, raw, ctype))
            await respond(200, out)
        except (ServiceError, RequestValidationError) as e:
            await respond(*_error_json(e))
        except Exception:
            if not started:  # as Starlette's ServerErrorMiddleware: a bare 500, then re-raise
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                    }
                )
                await send({"type": "http.response.body", "body": b"Internal Server Error"})
            raise
        finally:
            if svc is not None:
                svc.metrics.latency_child(endpoint, "POST").observe(time.perf_counter() - t0)


def create_app(config: ServiceConfig) -> FastAPI:
    """The service's FastAPI app; the store opens and the learner starts in its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = Service(config)
        app.state.service = svc
        svc.start()
        # What startup built (market, models, variant stores) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it on the request
        # path — measured under load (32 connections): max latency 160–220 → 55–59 ms.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            svc.close()

    app = ServiceApp(
        title="copyloop serve",
        version="1",
        summary="Rank copy variants for a request and learn from the rewards that follow.",
        lifespan=lifespan,
    )

    def observe(endpoint: str, method: str, seconds: float) -> None:
        svc = getattr(app.state, "service", None)
        if svc is not None:
            svc.metrics.latency_child(endpoint, method).observe(seconds)

    app.max_body_bytes = config.max_body_bytes
    app.add_middleware(BodyLimitAndTiming, limit=config.max_body_bytes, observe=observe)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # The offending input is left out: it may not be JSON (NaN) and it echoes the caller.
        status, body = _error_json(exc)
        return Response(body, status_code=status, media_type="application/json")

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        status, body = _error_json(exc)
        return Response(body, status_code=status, media_type="application/json")

    # rank and reward write their JSON themselves: the models above stay the documented (and
    # fuzz-tested) contract, without re-validating every response on the hot path. They are
    # HotRoutes: FastAPI documents them from the signature, and a request skips its dependency
    # resolution. They declare the key header for the schema; the middleware has checked it
    # (every valid key holds the client scope).
    hot = APIRouter(route_class=HotRoute)

    @hot.post("/v1/rank", response_model=RankResponse, responses=ERRORS)
    async def rank(request: Request, body: RankRequest, x_api_key: ApiKey = None) -> Response:
        svc: Service = request.app.state.service
        return Response(await rank_json(svc, body), media_type="application/json")

    @hot.post("/v1/events/{event_id}/reward", response_model=RewardResponse, responses=ERRORS)
    async def reward(
        request: Request, body: RewardRequest, event_id: str, x_api_key: ApiKey = None
    ) -> Response:
        svc: Service = request.app.state.service
        out = await reward_json(svc, event_id, body)
        return Response(out, media_type="application/json")

    app.include_router(hot)

    @app.post("/v1/events/{event_id}/activate", response_model=Ok, responses=ERRORS)
    async def activate(event_id: str, svc: SvcDep, _: Client) -> Ok:
        await svc.activate(event_id)
        return Ok()

    @app.post("/v1/admin/campaigns", response_model=CampaignOut, status_code=201, responses=ERRORS)
    def create_campaign(body: CampaignIn, svc: SvcDep, actor: Admin) -> CampaignOut:
        fields = body.model_dump(exclude={"variants"})
        try:
            cfg = CampaignConfig(**fields)
        except ValueError as e:
            raise ServiceError(422, str(e)) from None
        svc.create_campaign(cfg, [(v.variant_id, v.text) for v in body.variants], actor)
        return _campaign_out(svc, cfg.campaign_id)

    @app.get("/v1/admin/campaigns", response_model=list[CampaignOut], responses=ERRORS)
    def list_campaigns(svc: SvcDep, _: Admin) -> list[CampaignOut]:
        return [_campaign_out(svc, c) for c in svc.runtimes]

    @app.patch("/v1/admin/campaigns/{campaign_id}", response_model=CampaignOut, responses=ERRORS)
    def update_campaign(
        campaign_id: str, body: CampaignPatch, svc: SvcDep, actor: Admin
    ) -> CampaignOut:
        changes = body.model_dump(exclude_none=True)
        svc.update_campaign(campaign_id, changes, actor)
        return _campaign_out(svc, campaign_id)

    @app.post(
        "/v1/admin/campaigns/{campaign_id}/variants", response_model=VariantsOut, responses=ERRORS
    )
    def add_variants(campaign_id: str, body: VariantsIn, svc: SvcDep, actor: Admin) -> VariantsOut:
        ids = svc.add_variants(campaign_id, [(v.variant_id, v.text) for v in body.variants], actor)
        return VariantsOut(variant_ids=ids)

    @app.post(
        "/v1/admin/campaigns/{campaign_id}/variants/{variant_id}/retire",
        response_model=Ok,
        responses=ERRORS,
    )
    def retire_variant(campaign_id: str, variant_id: str, svc: SvcDep, actor: Admin) -> Ok:
        svc.retire_variant(campaign_id, variant_id, actor)
        return Ok()

    @app.post(
        "/v1/admin/campaigns/{campaign_id}/candidates",
        response_model=VariantsOut,
        responses=ERRORS,
    )
    def add_candidates(
        campaign_id: str, body: VariantsIn, svc: SvcDep, actor: Admin
    ) -> VariantsOut:
        variants = [(v.variant_id, v.text) for v in body.variants]
        return VariantsOut(variant_ids=svc.add_candidates(campaign_id, variants, actor))

    @app.post(
        "/v1/admin/campaigns/{campaign_id}/candidates/{variant_id}/{verdict}",
        response_model=VariantSetOut,
        responses=ERRORS,
    )
    def settle_candidate(
        campaign_id: str,
        variant_id: str,
        verdict: Literal["promote", "reject"],
        body: SettleIn,
        svc: SvcDep,
        actor: Admin,
    ) -> VariantSetOut:
        version = svc.settle_candidate(
            campaign_id, variant_id, verdict == "promote", actor, body.evidence
        )
        return _variant_set_out(svc.store.variant_sets(campaign_id)[version - 1])

    @app.post(
        "/v1/admin/campaigns/{campaign_id}/judge",
        response_model=list[VerdictOut],
        responses=ERRORS,
    )
    async def judge(campaign_id: str, body: JudgeIn, svc: SvcDep, _: Admin) -> list[VerdictOut]:
        """The gate's verdict on each candidate on trial (nothing is changed: settle them with
        .../candidates/{id}/promote or reject)."""
        from copyloop.serve.autopilot import GateSettings, judge_campaign

        svc.runtime(campaign_id)
        try:
            settings = GateSettings(**body.model_dump())
        except ValueError as e:
            raise ServiceError(422, str(e)) from None
        verdicts = await run_in_threadpool(judge_campaign, svc, campaign_id, settings)
        return [VerdictOut(**v.evidence(), action=v.action) for v in verdicts]

    @app.post(
        "/v1/admin/campaigns/{campaign_id}/policies/judge",
        response_model=list[PolicyVerdictOut],
        responses=ERRORS,
    )
    async def judge_policies(
        campaign_id: str, body: JudgePoliciesIn, svc: SvcDep, _: Admin
    ) -> list[PolicyVerdictOut]:
        """Each candidate agent setting judged against the campaign's model on its own log
        (progressive validation; nothing is changed: adopt one with .../policy)."""
        from copyloop.serve.policies import PolicyCandidate, PolicySettings

        svc.runtime(campaign_id)
        try:
            settings = PolicySettings(**body.model_dump(exclude={"policies"}))
            cands = [PolicyCandidate.checked(p.agent, p.params) for p in body.policies]
        except ValueError as e:
            raise ServiceError(422, str(e)) from None
        verdicts = await run_in_threadpool(svc.judge_policies, campaign_id, cands, settings)
        return [PolicyVerdictOut(**v.evidence()) for v in verdicts]

    @app.post("/v1/admin/campaigns/{campaign_id}/policy", response_model=AdoptOut, responses=ERRORS)
    async def adopt_policy(campaign_id: str, body: AdoptIn, svc: SvcDep, actor: Admin) -> AdoptOut:
        """Serve and learn with another agent setting (it first learns every row the model has
        learned); recorded with its evidence; rollback restores the earlier agent."""
        from copyloop.serve.policies import PolicyCandidate

        try:
            c = PolicyCandidate.checked(body.agent, body.params)
        except ValueError as e:
            raise ServiceError(422, str(e)) from None
        snap, sets = await run_in_threadpool(
            svc.adopt_policy, campaign_id, c.agent, dict(c.params), body.evidence, actor
        )
        return AdoptOut(snapshot_version=snap, variant_sets=sets)

    @app.get(
        "/v1/admin/campaigns/{campaign_id}/variant-sets",
        response_model=list[VariantSetOut],
        responses=ERRORS,
    )
    def variant_sets(campaign_id: str, svc: SvcDep, _: Admin) -> list[VariantSetOut]:
        svc.runtime(campaign_id)
        return [_variant_set_out(r) for r in svc.store.variant_sets(campaign_id)]

    @app.post(
        "/v1/admin/campaigns/{campaign_id}/rollback",
        response_model=VariantSetOut,
        responses=ERRORS,
    )
    def rollback(campaign_id: str, body: RollbackIn, svc: SvcDep, actor: Admin) -> VariantSetOut:
        version = svc.rollback(campaign_id, body.variant_set, actor)
        return _variant_set_out(svc.store.variant_sets(campaign_id)[version - 1])

    @app.get("/v1/admin/campaigns/{campaign_id}/stats", response_model=StatsOut, responses=ERRORS)
    def stats(campaign_id: str, svc: SvcDep, _: Admin) -> StatsOut:
        rt = svc.runtime(campaign_id)
        s = svc.store.stats(campaign_id)
        s.pop("oldest_unjoined_ts", None)
        return StatsOut(
            **s, model_version=rt.policy.model_version, snapshot_version=rt.snapshot_version
        )

    @app.get(
        "/v1/admin/campaigns/{campaign_id}/models",
        response_model=list[SnapshotOut],
        responses=ERRORS,
    )
    def models(campaign_id: str, svc: SvcDep, _: Admin) -> list[SnapshotOut]:
        rt = svc.runtime(campaign_id)
        return [
            SnapshotOut(
                version=s.version,
                model_version=s.model_version,
                created=s.created,
                rows_learned=s.rows_learned,
            )
            for s in svc.store.snapshots(rt.model.model_id)
        ]

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard(
        svc: SvcDep,
        campaign: str | None = None,
        key: str | None = None,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> HTMLResponse:
        """The campaign's dashboard page (admin key in ``X-API-Key`` or ``?key=`` for a
        browser on loopback)."""
        from urllib.parse import quote

        from copyloop.serve.dashboard import render

        await authorize(svc, x_api_key or key, "admin")
        if campaign is None:
            if not svc.runtimes:
                raise ServiceError(404, "no campaigns yet — create one first")
            campaign = next(iter(svc.runtimes))
        keyq = f"&key={quote(key, safe='')}" if key else ""
        html = await run_in_threadpool(render, svc, campaign, key_query=keyq)
        return HTMLResponse(html)

    @app.get("/healthz", response_model=Health)
    async def healthz(svc: SvcDep) -> Health:
        err = svc.learner.error or svc.follower.error
        return Health(
            status="ok" if err is None else "degraded",
            campaigns=len(svc.runtimes),
            learner_error=None if err is None else f"{type(err).__name__}: {err}",
            role=svc.config.role,
        )

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics(svc: SvcDep) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        st = svc.store.commit_stats
        svc.metrics.commits.set(st.commits)
        svc.metrics.commit_ops.set(st.ops)
        svc.metrics.commit_retries.set(st.retries)
        svc.metrics.store_reconnects.set(st.reconnects)
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
