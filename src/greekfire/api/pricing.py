"""The pricing-model inference server: ``POST /v1/price``, ``GET /health``, ``GET /metrics``.

``greekfire serve pricing --model PATH_OR_MLFLOW_URI`` runs :func:`build_app` under uvicorn; tests and the
benchmark build the same app.

Requests (JSON)::

    POST /v1/price
    {"contract": [[1.05, 0.5, 0.03, 0.2], ...]}            # rows of the model's contract features
    {"rows": [{"moneyness": 1.05, "ttm": 0.5, "rate": 0.03, "vol": 0.2}]}   # or named features
    {"contract": [...], "seq": [[[...] x window] x rows]}  # LSTM models also take the history window

or an Arrow IPC stream (``Content-Type: application/vnd.apache.arrow.stream``) with one float column per
contract feature and, for LSTM models, a ``seq`` column of lists of per-day lists. The answer is
``{"price": [...], "unit": "price/strike", "rows": n, "model": ..., "request_id": ..., "variant": ...}``. A bad request gets HTTP 422 whose
``detail`` names the field (``contract[3].vol``, ``seq``, ``rows[0].ttm``).

A/B serving (:mod:`greekfire.training.ab`, ``--model registry``): each request goes to the registry's
champion or challenger by ``models.ab_challenger_weight``; the answer names the ``variant`` and a
``request_id``. ``POST /v1/observed`` ``{"request_id": ..., "price": [...]}`` joins the price observed later
(price/strike, one per row) to that prediction; ``GET /v1/ab`` shows the per-variant figures and the
sequential test, which promotes or rolls back the challenger through the registry once it decides.

Example::

    curl -s localhost:8000/v1/price -H 'content-type: application/json' \\
         -d '{"rows": [{"moneyness": 1.0, "ttm": 0.5, "rate": 0.03, "vol": 0.2}]}'
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, ValidationError

from greekfire.api.server import ListeningServer
from greekfire.core.errors import DataError
from greekfire.core.metrics import counter, histogram, mount_metrics
from greekfire.core.settings import Settings, load_settings
from greekfire.gpu.device import choose_device, cuda_usable
from greekfire.gpu.manager import GpuManager
from greekfire.ml.serving import LoadedModel, MicroBatcher, check_inputs, compile_model, load_pricing_model
from greekfire.ml.tracking import mlflow_uri
from greekfire.training.ab import ABRouter

ARROW_TYPES = ("application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.file")

REQUESTS = counter("greekfire_inference_requests", "pricing requests by outcome (ok, invalid, error)", ["status"])
for _status in ("ok", "invalid", "error"):
    REQUESTS.labels(_status)  # every outcome's series exists (at 0) from the start: error rates need them
LATENCY = histogram(
    "greekfire_inference_request_seconds", "pricing request latency in the server, seconds",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)


class PriceRequest(BaseModel):
    """A JSON batch: ``contract`` rows or named ``rows`` (one of them), plus ``seq`` for LSTM models."""

    model_config = ConfigDict(extra="forbid")

    # strict: `true` is not the number 1 (an int is still a float)
    contract: list[list[StrictFloat]] | None = Field(None, description="rows of contract features, model order")
    rows: list[dict[str, StrictFloat]] | None = Field(None, description="rows of named contract features")
    seq: list[list[list[StrictFloat]]] | None = Field(None, description="history windows [rows][window][features]")


class PriceResponse(BaseModel):
    """Model output per row: price divided by strike (multiply by the strike for currency)."""

    price: list[float]
    unit: str = "price/strike"
    rows: int
    model: str
    request_id: str = Field(description="id to post the observed price under (POST /v1/observed)")
    variant: str | None = Field(None, description="A/B variant that answered (champion, challenger); none: no A/B")


class ObservedPrices(BaseModel):
    """Prices observed after a prediction, joined to it by ``request_id`` (price/strike, one per row)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1)
    price: list[StrictFloat] = Field(min_length=1)


def _unprocessable(field: str, value: Any, msg: str) -> RequestValidationError:
    loc = ("body", *field.replace("]", "").replace("[", ".").split("."))
    if isinstance(value, float) and not math.isfinite(value):
        value = str(value)  # NaN and infinities are not JSON: echo them as text
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


def _from_json(model: LoadedModel, body: bytes) -> tuple[torch.Tensor, torch.Tensor | None]:
    try:
        req = PriceRequest.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    if (req.contract is None) == (req.rows is None):
        raise _unprocessable("contract", None, "send exactly one of `contract` (lists) or `rows` (named features)")
    if req.rows is not None:
        names = model.contract_names
        table = []
        for i, row in enumerate(req.rows):
            missing = [n for n in names if n not in row]
            extra = [k for k in row if k not in names]
            if missing or extra:
                field = f"rows[{i}].{(missing or extra)[0]}"
                raise _unprocessable(field, row, f"each row needs exactly the features {names}")
            table.append([row[n] for n in names])
        contract = torch.tensor(table, dtype=torch.float32)
    else:
        widths = {len(r) for r in req.contract or []}
        if len(widths) > 1:
            raise _unprocessable("contract", sorted(widths), "all rows need the same number of features")
        contract = torch.tensor(req.contract, dtype=torch.float32)
        if contract.ndim == 1:  # an empty list
            contract = contract.reshape(0, len(model.contract_names))
    seq = None
    if req.seq is not None:
        try:
            seq = torch.tensor(req.seq, dtype=torch.float32)
        except ValueError:
            raise _unprocessable("seq", None, "ragged: every window needs the same days and features") from None
    return contract, seq


def _from_arrow(model: LoadedModel, body: bytes) -> tuple[torch.Tensor, torch.Tensor | None]:
    try:
        table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    except pa.ArrowInvalid:
        try:
            table = pa.ipc.open_file(pa.py_buffer(body)).read_all()
        except pa.ArrowInvalid as exc:
            raise _unprocessable("body", None, f"not an Arrow IPC stream or file: {exc}") from None
    missing = [n for n in model.contract_names if n not in table.column_names]
    if missing:
        raise _unprocessable(missing[0], table.column_names, f"the Arrow table needs columns {model.contract_names}")
    cols = [table.column(n).to_numpy(zero_copy_only=False).astype(np.float32) for n in model.contract_names]
    contract = torch.from_numpy(np.stack(cols, axis=1)) if cols else torch.empty(0, 0)
    seq = None
    if "seq" in table.column_names:
        try:
            seq = torch.tensor(table.column("seq").to_pylist(), dtype=torch.float32)
        except (ValueError, TypeError):
            raise _unprocessable("seq", None, "ragged: every window needs the same days and features") from None
    return contract, seq


def build_app(settings: Settings | None = None, model: LoadedModel | None = None, *,
              batching: bool = True, ab: ABRouter | None = None) -> FastAPI:
    """The inference app for ``model`` (a :class:`~greekfire.ml.serving.LoadedModel`), or for the
    champion and challenger of ``ab`` (an :class:`~greekfire.training.ab.ABRouter`; ``model`` may be None).

    ``batching=False`` runs one forward pass per request (the benchmark's baseline); the micro-batch
    window and size come from ``training.serve_max_wait_ms`` and ``training.serve_max_batch_rows``; the
    network runs as ``training.serve_compile`` says (default ``script``: TorchScript).
    """
    if model is None and ab is not None:
        model = ab.models["champion"]
    if model is None:
        raise DataError("model", None, "build_app needs a loaded model (greekfire.ml.serving.load_pricing_model)")
    s = settings or load_settings()
    if s.training.torch_threads:
        # small models on a shared CPU run fastest on one thread: spinning OpenMP workers lose to the clients
        torch.set_num_threads(s.training.torch_threads)
    for m in (ab.models.values() if ab is not None else [model]):
        if m is not None and m.runner is None:
            compile_model(m, s.training.serve_compile)
    batcher = MicroBatcher(model, max_rows=s.training.serve_max_batch_rows,
                           max_wait_ms=s.training.serve_max_wait_ms, enabled=batching)
    batchers: dict[int, MicroBatcher] = {id(model): batcher}

    def batcher_for(m: LoadedModel) -> MicroBatcher:
        if id(m) not in batchers:
            batchers[id(m)] = MicroBatcher(m, max_rows=s.training.serve_max_batch_rows,
                                           max_wait_ms=s.training.serve_max_wait_ms, enabled=batching)
        return batchers[id(m)]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for b in batchers.values():
                await b.close()

    app = FastAPI(title="greekfire pricing model", version="1", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.model = model
    mount_metrics(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        model = ab.models["champion"] if ab is not None else app.state.model
        return {
            "status": "ok",
            "model": model.source,
            "kind": model.info.get("kind"),
            "device": str(model.device),
            "contract_features": model.contract_names,
            "seq_features": model.seq_names,
            "window": model.window,
            "batching": {"enabled": batching, "max_rows": batcher.max_rows, "max_wait_ms": batcher.max_wait_s * 1e3,
                         "batches": batcher.batches, "rows": batcher.rows},
        }

    @app.post("/v1/price", response_model=PriceResponse)
    async def price(request: Request) -> PriceResponse:
        """Price / strike for a JSON or Arrow batch of contracts (see the module docstring); under A/B from
        the champion or the challenger, answering with the variant."""
        with LATENCY.time():
            t0 = time.perf_counter()
            variant = ab.choose() if ab is not None else None
            chosen: LoadedModel = ab.models[variant] if ab is not None and variant is not None else model
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            body = await request.body()
            try:
                contract, seq = _from_arrow(chosen, body) if ctype in ARROW_TYPES else _from_json(chosen, body)
                check_inputs(chosen, contract, seq)
            except RequestValidationError:
                REQUESTS.labels("invalid").inc()
                raise
            except DataError as exc:
                REQUESTS.labels("invalid").inc()
                raise _unprocessable(exc.field, exc.value, exc.reason) from None
            request_id = uuid.uuid4().hex
            try:
                out = await batcher_for(chosen).submit(contract, seq if chosen.uses_sequence else None)
            except Exception:
                REQUESTS.labels("error").inc()
                if ab is not None and variant is not None:
                    ab.record(request_id, variant, [], time.perf_counter() - t0, ok=False)
                raise
            prices = out.tolist()
            if ab is not None and variant is not None:
                ab.record(request_id, variant, prices, time.perf_counter() - t0)
            REQUESTS.labels("ok").inc()
            return PriceResponse(price=prices, rows=len(out), model=chosen.source, request_id=request_id,
                                 variant=variant)

    @app.post("/v1/observed")
    async def observed(body: ObservedPrices) -> dict[str, Any]:
        """Join observed prices to an earlier A/B prediction; the test may decide (and the registry record it)."""
        if ab is None:
            raise HTTPException(404, "this server runs no A/B test (serve with --model registry)")
        try:
            return await asyncio.to_thread(ab.observe, body.request_id, list(body.price))
        except DataError as exc:
            raise _unprocessable(exc.field, exc.value, exc.reason) from None

    @app.get("/v1/ab")
    async def ab_state() -> dict[str, Any]:
        """The A/B split, per-variant latency and error, and the sequential test."""
        if ab is None:
            raise HTTPException(404, "this server runs no A/B test (serve with --model registry)")
        return ab.state()

    return app


def serve(settings: Settings, model_uri: str, *, host: str | None = None, port: int | None = None,
          batching: bool = True, device: str | None = None) -> None:
    """Load ``model_uri`` (a checkpoint path, a run folder: its best, else last checkpoint, an MLflow URI, or
    ``registry``: the registry's champion, A/B against its challenger by ``models.ab_challenger_weight``)
    and serve it with uvicorn until stopped; once it listens, say where on stderr:
    ``greekfire serve pricing: listening on http://HOST:PORT (/v1/price, /health, /metrics, /docs)``.

    ``device`` (``--device``) overrides ``quant.device``; ``auto`` is decided by the GPU manager: a healthy
    GPU keeping ``gpu.min_free_mb`` MiB of headroom, chosen by ``gpu.placement``, else the CPU.
    """
    requested = device or settings.quant.device
    # the manager (NVML discovery and health) is only worth starting where there is a GPU to choose
    manager = GpuManager(settings) if requested == "auto" and settings.gpu.enabled and cuda_usable() else None
    chosen = choose_device(requested, min_free_mb=settings.gpu.min_free_mb, manager=manager)
    if model_uri == "registry":  # the registry's champion, and its challenger under A/B
        from greekfire.training.ab import router_from_registry
        from greekfire.training.registry import open_registry

        ab = router_from_registry(settings, open_registry(settings), device=str(chosen))
        app = build_app(settings, None, batching=batching, ab=ab)
    else:
        model = load_pricing_model(model_uri, device=chosen, tracking_uri=mlflow_uri(settings))
        app = build_app(settings, model, batching=batching)
    config = uvicorn.Config(app, host=host or settings.api.host, port=port or settings.api.port, log_level="warning")
    ListeningServer(config, name="greekfire serve pricing", paths="/v1/price, /health, /metrics, /docs").run()
