"""Serving a trained pricer: load a checkpoint (path or MLflow URI) and micro-batch concurrent requests.

:class:`MicroBatcher` gathers requests for up to ``max_wait_ms`` or ``max_rows`` rows, runs one forward
pass for all of them (in a worker thread, so the event loop keeps accepting requests meanwhile) and hands
each caller its slice. With ``enabled=False`` every request runs its own forward pass (the baseline the
benchmark compares against).

Example::

    model = load_pricing_model("runs/smoke/<version>/checkpoints/best.ckpt")
    batcher = MicroBatcher(model, max_rows=4096, max_wait_ms=2.0)
    prices = await batcher.submit(torch.tensor([[1.0, 0.5, 0.03, 0.2]]))   # price / strike
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from greekfire.core.errors import ConfigError, DataError, GreekfireError, InputFileError
from greekfire.core.metrics import counter, histogram
from greekfire.gpu.device import choose_device
from greekfire.ml.module import PricingModule

log = logging.getLogger(__name__)

BATCH_ROWS = histogram(
    "greekfire_inference_batch_rows", "rows per forward pass of the pricing model",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384),
)
FORWARD_SECONDS = histogram("greekfire_inference_forward_seconds", "pricing model forward pass, seconds")
ROWS_PRICED = counter("greekfire_inference_rows", "rows priced by the pricing model")


@dataclass
class LoadedModel:
    """A pricing network ready for inference and what its inputs are."""

    module: PricingModule
    contract_names: list[str]
    seq_names: list[str]
    window: int
    device: torch.device
    source: str
    info: dict[str, Any] = field(default_factory=dict)
    #: what runs the forward pass: the module itself, or its compiled form (see :func:`compile_model`)
    runner: Any = None

    @property
    def uses_sequence(self) -> bool:
        """True when requests must carry the history window ``seq``."""
        return self.module.uses_sequence

    @torch.inference_mode()
    def __call__(self, contract: Tensor, seq: Tensor | None = None) -> Tensor:
        """Price / strike [N] (float32, CPU) for raw features; runs on the model's device."""
        net = self.runner if self.runner is not None else self.module
        c = contract.to(self.device)
        out = net(c) if seq is None else net(c, seq.to(self.device))
        return out.float().cpu()


#: how the served network runs: ``none`` eager PyTorch, ``script`` TorchScript (torch.jit.trace, frozen),
#: ``compile`` torch.compile (dynamic shapes; needs a C++ compiler on CPU)
COMPILE_MODES = ("none", "script", "compile")


def compile_model(model: LoadedModel, mode: str = "script") -> LoadedModel:
    """Make ``model`` run its forward pass compiled (``mode``: one of :data:`COMPILE_MODES`); returns it.

    ``script`` traces the network on example rows of its own input shape and freezes it (weights become
    constants); outputs match the eager module to float32 rounding. Raises ConfigError naming
    ``training.serve_compile`` for an unknown mode.
    """
    if mode not in COMPILE_MODES:
        raise ConfigError("training.serve_compile", mode, f"one of {list(COMPILE_MODES)}")
    if mode == "none":
        model.runner = None
        return model
    net = model.module.net
    n = 8
    contract = torch.rand(n, len(model.contract_names), device=model.device) + 0.5
    seq = (torch.randn(n, model.window, len(model.seq_names), device=model.device)
           if model.uses_sequence else None)
    with torch.no_grad():
        if mode == "compile":
            model.runner = torch.compile(net, dynamic=True)
            model.runner(contract) if seq is None else model.runner(contract, seq)  # compile now, not on a request
        else:
            example = (contract,) if seq is None else (contract, seq)
            with warnings.catch_warnings():
                # attention's shape asserts become constants: the shapes they check are fixed by the model
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(net, example, check_trace=False)
            model.runner = torch.jit.freeze(traced.eval())
    model.info["compile"] = mode
    return model


def _resolve_uri(uri: str, tracking_uri: str | None) -> Path:
    """A local checkpoint file for an MLflow URI (``runs:/...``, ``models:/...``, ``mlflow-artifacts:/...``)."""
    import mlflow  # lazy: MLflow takes about two seconds to import and only URIs need it

    from greekfire.core.settings import env_set

    # through the tracking server, never presigned URLs straight to its object store: a client needs only
    # the server's URL (the store may be on a network the client cannot reach); a user's setting is kept
    env_set("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false", overwrite=False)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri))
    except Exception as exc:  # mlflow raises several types; say which URI failed
        raise ConfigError("--model", uri, f"MLflow could not fetch it: {exc}") from None
    if local.is_dir():
        found = sorted(local.rglob("*.ckpt"))
        if not found:
            raise ConfigError("--model", uri, "the MLflow artifact holds no .ckpt file")
        local = found[0]
    return local


def checkpoint_in(folder: Path) -> Path:
    """The checkpoint to load from a folder: a run folder's ``checkpoints/best.ckpt``, else its ``last.ckpt``
    (also directly in ``folder``); else the newest ``best.ckpt`` (then ``last.ckpt``, then any ``.ckpt``)
    below it, e.g. of the latest version under ``runs/<name>/``. Raises ConfigError naming the folder when it
    holds none."""
    for name in ("best.ckpt", "last.ckpt"):
        for candidate in (folder / "checkpoints" / name, folder / name):
            if candidate.is_file():
                return candidate
    for pattern in ("best.ckpt", "last.ckpt", "*.ckpt"):
        found = [p for p in folder.rglob(pattern) if p.is_file()]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
    raise ConfigError("--model", str(folder), "the folder holds no checkpoint (.ckpt): give a checkpoint file, "
                      "a run folder of `greekfire train pricing` (<runs_dir>/<name>/<version>) or an MLflow URI")


def load_pricing_model(
    path_or_uri: str | Path,
    *,
    device: str | torch.device | None = None,
    tracking_uri: str | None = None,
    min_free_mb: float = 0.0,
) -> LoadedModel:
    """Load a pricing checkpoint from a path, a run folder (see :func:`checkpoint_in`) or an MLflow URI.

    ``device``: ``auto`` (the default), ``cpu``, ``cuda`` or ``cuda:N``, decided by
    :func:`greekfire.gpu.device.choose_device`: ``auto`` takes the GPU with the most free memory when it has
    at least ``min_free_mb`` MiB free, else the CPU. Checkpoints of every format version load (see
    :data:`greekfire.ml.module.CHECKPOINT_FORMAT`).
    """
    text = str(path_or_uri)
    path = _resolve_uri(text, tracking_uri) if ":/" in text and not Path(text).exists() else Path(text)
    if path.is_dir():
        path = checkpoint_in(path)
    if not path.is_file():
        raise ConfigError("--model", text, "no such checkpoint file (a .ckpt path or an MLflow runs:/ URI)")
    dev = choose_device(device or "auto", min_free_mb=min_free_mb)
    try:
        module = PricingModule.load_from_checkpoint(str(path), map_location=dev)
    except GreekfireError:  # a checkpoint of ours that says what is wrong with it (a newer format...)
        raise
    except Exception as exc:  # torch.load fails on a foreign file with whatever its unpickler meets
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise InputFileError("--model", str(path), f"not a greekfire pricing checkpoint (a .ckpt written by "
                             f"`greekfire train pricing`): {reason}") from exc
    module.eval()
    hp = module.hparams
    return LoadedModel(
        module=module,
        contract_names=list(hp.get("contract_names") or [f"c{i}" for i in range(hp["n_contract"])]),
        seq_names=list(hp.get("seq_names") or []),
        window=int(hp.get("window") or 0),
        device=dev,
        source=text,
        info={"kind": module.model_cfg.kind, "parameters": sum(p.numel() for p in module.parameters())},
    )


@dataclass
class _Pending:
    contract: Tensor
    seq: Tensor | None
    future: asyncio.Future[Tensor]


class MicroBatcher:
    """Gathers concurrent requests into one forward pass (see the module docstring)."""

    def __init__(self, model: LoadedModel, *, max_rows: int = 4096, max_wait_ms: float = 2.0,
                 enabled: bool = True) -> None:
        if max_rows < 1:
            raise ConfigError("training.serve_max_batch_rows", max_rows, "at least 1")
        self.model = model
        self.max_rows = max_rows
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.enabled = enabled
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._carry: _Pending | None = None
        self._getter: asyncio.Future[_Pending] | None = None
        self.inline_rows = 256
        self.batches = 0
        self.rows = 0

    def _forward(self, contract: Tensor, seq: Tensor | None) -> Tensor:
        t0 = time.perf_counter()
        out = self.model(contract, seq)
        FORWARD_SECONDS.observe(time.perf_counter() - t0)
        BATCH_ROWS.observe(len(contract))
        ROWS_PRICED.inc(len(contract))
        self.batches += 1
        self.rows += len(contract)
        return out

    def _ensure_worker(self) -> asyncio.Queue[_Pending]:
        # started lazily inside the serving loop (ASGI test transports run no lifespan events)
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue, self._getter, self._carry = asyncio.Queue(), None, None
            self._worker = asyncio.get_running_loop().create_task(self._run())
        return self._queue

    async def submit(self, contract: Tensor, seq: Tensor | None = None) -> Tensor:
        """Price / strike for these rows, computed in a shared forward pass with concurrent requests."""
        if not self.enabled:
            return await asyncio.to_thread(self._forward, contract, seq)
        queue = self._ensure_worker()
        fut: asyncio.Future[Tensor] = asyncio.get_running_loop().create_future()
        await queue.put(_Pending(contract, seq, fut))
        return await fut

    async def _next(self, queue: asyncio.Queue[_Pending], timeout: float | None) -> _Pending | None:
        """The next request, waiting at most ``timeout`` seconds (None: forever).

        The pending ``queue.get()`` is kept across calls rather than cancelled on timeout, so a request
        that arrives just as the window closes is never dropped.
        """
        if self._getter is None:
            self._getter = asyncio.ensure_future(queue.get())
        done, _ = await asyncio.wait({self._getter}, timeout=timeout)
        if not done:
            return None
        item, self._getter = self._getter.result(), None
        return item

    async def _gather(self, queue: asyncio.Queue[_Pending]) -> list[_Pending]:
        first = self._carry or await self._next(queue, None)
        assert first is not None
        self._carry = None
        batch, rows = [first], len(first.contract)
        deadline = time.perf_counter() + self.max_wait_s
        while rows < self.max_rows:
            item: _Pending | None
            if self._getter is None and not queue.empty():
                item = queue.get_nowait()  # what queued up while the last forward ran: no waiting
            else:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                item = await self._next(queue, left)
                if item is None:
                    break
            if rows + len(item.contract) > self.max_rows:
                self._carry = item  # would overflow the batch: first in line for the next one
                break
            batch.append(item)
            rows += len(item.contract)
        return batch

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = await self._gather(queue)
            live = [p for p in batch if not p.future.done()]  # a caller may have gone away
            if not live:
                continue
            try:
                contract = torch.cat([p.contract for p in live])
                seq = torch.cat([p.seq for p in live]) if live[0].seq is not None else None  # type: ignore[misc]
                if len(contract) <= self.inline_rows and self.model.device.type == "cpu":
                    # a small CPU forward costs less than handing it to a thread and back
                    out = self._forward(contract, seq)
                else:
                    out = await asyncio.to_thread(self._forward, contract, seq)
            except Exception as exc:  # one bad forward must fail its callers, not the server
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            start = 0
            for p in live:
                n = len(p.contract)
                if not p.future.done():
                    p.future.set_result(out[start : start + n])
                start += n

    async def close(self) -> None:
        """Stop the worker task."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
            self._worker = None
        if self._getter is not None:
            self._getter.cancel()
            self._getter = None


#: lower bounds of contract features, the rules ``greekfire price`` marks a row ``bad_input`` by
#: (spot and strike > 0, so moneyness > 0; ttm >= 0; vol >= 0): (bound, strict)
FEATURE_BOUNDS: dict[str, tuple[float, bool]] = {"moneyness": (0.0, True), "ttm": (0.0, False), "vol": (0.0, False)}


@functools.lru_cache(maxsize=64)
def _clean_range(names: tuple[str, ...], dtype: np.dtype[Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Per contract column, the least and the greatest value :func:`check_inputs` passes: finite, and inside
    :data:`FEATURE_BOUNDS` (a strict bound as the next number of ``dtype`` above it, so the test is exact)."""
    big = np.finfo(dtype).max
    lo = np.full(len(names), -big, dtype=dtype)
    for c, name in enumerate(names):
        if name in FEATURE_BOUNDS:
            low, strict = FEATURE_BOUNDS[name]
            lo[c] = np.nextafter(dtype.type(low), dtype.type(np.inf)) if strict else low
    return lo, np.full(len(names), big, dtype=dtype)


def _all_clean(model: LoadedModel, contract: Tensor) -> bool:
    """True when every value of ``contract`` (a CPU float tensor [rows, features]) is finite and in range:
    one numpy comparison against :func:`_clean_range` (a request pays microseconds for each torch call on
    a few rows; this replaced four of them). False means: look (and for a tensor elsewhere, always look)."""
    if contract.device.type != "cpu" or contract.dtype not in (torch.float32, torch.float64):
        return False
    a = contract.detach().numpy()
    lo, hi = _clean_range(tuple(model.contract_names), a.dtype)
    return bool(((a >= lo) & (a <= hi)).all())  # NaN fails both comparisons


def check_inputs(model: LoadedModel, contract: Tensor, seq: Tensor | None) -> None:
    """Raise DataError naming the field when shapes do not match the model, values are not finite, or a
    feature is out of range (:data:`FEATURE_BOUNDS`: negative vol or time to expiry, moneyness <= 0)."""
    n_c = len(model.contract_names)
    if contract.ndim != 2 or contract.shape[1] != n_c:
        raise DataError("contract", list(contract.shape),
                        f"expected rows of {n_c} features {model.contract_names}")
    if len(contract) == 0:
        raise DataError("contract", 0, "at least one row")
    if not _all_clean(model, contract):  # the common case is one comparison; the first offender is found here
        bad = (~torch.isfinite(contract)).nonzero()
        if len(bad):
            r, c = (int(v) for v in bad[0])
            raise DataError(f"contract[{r}].{model.contract_names[c]}", float(contract[r, c]),
                            "must be a finite number")
        for c, name in enumerate(model.contract_names):
            if name not in FEATURE_BOUNDS:
                continue
            low, strict = FEATURE_BOUNDS[name]
            bad_rows = ((contract[:, c] <= low) if strict else (contract[:, c] < low)).nonzero()
            if len(bad_rows):
                r = int(bad_rows[0])
                raise DataError(f"contract[{r}].{name}", float(contract[r, c]), f"must be {'>' if strict else '>='} "
                                f"{low:g} (as `greekfire price` requires of a row)")
    if model.uses_sequence:
        if seq is None:
            raise DataError("seq", None, f"this model needs the history window [rows, {model.window}, "
                            f"{len(model.seq_names)}] ({model.seq_names})")
        want = (len(contract), model.window, len(model.seq_names))
        if tuple(seq.shape) != want:
            raise DataError("seq", list(seq.shape), f"expected shape {list(want)}")
        if not bool(torch.isfinite(seq).all()):
            r = int((~torch.isfinite(seq)).nonzero()[0][0])
            raise DataError(f"seq[{r}]", "non-finite", "must hold finite numbers")
