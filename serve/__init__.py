"""The live rank/reward service: a FastAPI app over a group-committed store and a learner.

Build one with :func:`create_app` (``copyloop serve`` runs it under uvicorn); the store is the
:class:`Store` interface (SQLite today); ``SQLiteStore.export_log`` writes the joined decisions
as a DecisionLog that ``copyloop ope`` reads unchanged.

Needs the ``serve`` extra: ``pip install 'copyloop[serve]'``.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"copyloop.serve needs the `serve` extra ({e.name} is missing) — "
        "pip install 'copyloop[serve]'"
    ) from None

from copyloop.serve.app import create_app
from copyloop.serve.client import APIError, AsyncClient, Client
from copyloop.serve.service import Service, ServiceConfig, ServiceError
from copyloop.serve.store import CampaignConfig, SQLiteStore, Store

__all__ = [
    "APIError",
    "AsyncClient",
    "CampaignConfig",
    "Client",
    "SQLiteStore",
    "Service",
    "ServiceConfig",
    "ServiceError",
    "Store",
    "create_app",
]
