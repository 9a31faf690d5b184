"""create_app(): the FastAPI control plane, its error translation, health and metrics routes."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from splitft import __version__
from splitft.errors import NotFound, SplitftError
from splitft.security.files import write_private_file
from splitft.security.trust import CA_PATH
from splitft_control import migrate
from splitft_control.limits import BodyLimitMiddleware, BodyLimits
from splitft_control.routes import device_side, devices, edges, jobs, plans, resume, secagg, ui
from splitft_control.settings import ControlSettings
from splitft_control.state import ControlState
from splitft_control.store import Store

logger = logging.getLogger(__name__)
# Metric labels come from a fixed set: any other method is "OTHER", any unknown path "unmatched".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def bootstrap_operator_key(store: Store, settings: ControlSettings) -> str | None:
    """The first operator key: SPLITFT_OPERATOR_KEY, else generated; returns a generated key once."""
    if settings.operator_key is not None:
        if not store.api_key_valid(key=settings.operator_key):
            store.create_api_key(name="bootstrap", key=settings.operator_key)
        return None
    if store.count_api_keys() == 0:
        _, key = store.create_api_key(name="bootstrap")
        return key
    return None


OPERATOR_KEY_FILE = "operator.key"


def save_generated_operator_key(settings: ControlSettings, key: str) -> Path:
    """Write a generated operator key to DATA_DIR/operator.key (0600); logs would keep it forever."""
    path = settings.data_dir / OPERATOR_KEY_FILE
    write_private_file(path, key.encode() + b"\n", force=True)  # a stale file holds a dead key
    return path


def build_state(settings: ControlSettings) -> ControlState:
    """Check the secrets, migrate the database and create the first operator key; the state routes share."""
    settings.check_secrets()
    store = migrate.migrated_store(settings)
    generated = bootstrap_operator_key(store, settings)
    if generated is not None:
        # Only its hash is stored; the key itself goes to a 0600 file, never to the log.
        path = save_generated_operator_key(settings, generated)
        logger.warning(
            "generated the first operator API key in %s (0600): store it elsewhere, then delete the file",
            path,
        )
    return ControlState(settings, store)


def create_app(settings: ControlSettings, state: ControlState | None = None) -> FastAPI:
    """The control plane's FastAPI app: routers, body limits, metrics, the CA route and error translation."""
    control = state or build_state(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        control.start()
        yield
        control.stop()

    app = FastAPI(title="splitft control plane", version=__version__, lifespan=lifespan)
    app.state.control = control
    for router in (
        edges.router,
        devices.router,
        jobs.router,
        device_side.router,
        resume.router,
        secagg.router,
        ui.router,
        plans.router,
    ):
        app.include_router(router)
    limits = BodyLimits(
        json=control.settings.max_body_bytes,
        metrics=control.settings.max_metrics_body_bytes,
        adapter=control.settings.max_adapter_bytes,
    )
    app.add_middleware(BodyLimitMiddleware, limits=limits)  # type: ignore[arg-type]
    _add_observability(app, control)  # added last: outermost, so refused requests are timed too
    _add_ca_route(app, control)
    _add_error_handlers(app)
    return app


def _add_ca_route(app: FastAPI, control: ControlState) -> None:
    @app.get(CA_PATH, tags=["devices"], response_class=Response)
    def deployment_ca() -> Response:
        """The deployment CA (public, no bearer): a device checks it against the fingerprint in its token
        before it trusts this control plane. 404 when this control plane has no CA (--certs-dir)."""
        ca_dir = control.settings.ca_dir
        if ca_dir is None or not (ca_dir / "ca.pem").is_file():
            raise NotFound("this control plane has no deployment CA (--certs-dir)")
        return Response((ca_dir / "ca.pem").read_bytes(), media_type="application/x-pem-file")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SplitftError)
    async def _domain_error(request: Request, exc: SplitftError) -> JSONResponse:
        logger.info("%s %s -> %d: %s", request.method, request.url.path, exc.code.http_status, exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if exc.code.http_status == 401 else None
        return JSONResponse({"detail": exc.message}, status_code=exc.code.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the input, and a NaN or Infinity there (Python's json accepts
        # them in a body) makes the 422 itself fail to render: a 500.
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


def _json_safe(value: Any) -> Any:
    """`value` with non-finite floats spelled as text, which strict JSON can carry."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def _add_observability(app: FastAPI, control: ControlState) -> None:
    @app.middleware("http")
    async def _time_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Time every request, labelled by route template (never the raw path, which callers choose)."""
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        method = request.method if request.method in _METHODS else "OTHER"
        control.metrics.latency.labels(method, path, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness for compose and probes (anyone): 200 once the database answers a query, else 500."""
        with control.store.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return {"status": "ok"}

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics (anyone, no secrets in them): request latency, jobs by state, placements."""
        return Response(generate_latest(control.metrics.registry), media_type=CONTENT_TYPE_LATEST)
