"""Memory policy per framework, and out-of-memory recovery by shrinking batches.

:func:`apply_memory_policy` configures only the frameworks that are installed (torch, CuPy, JAX,
TensorFlow) and says what it did for each. :func:`run_with_oom_backoff` runs a function over batches of
items and, when a batch does not fit (``torch.cuda.OutOfMemoryError`` or a CPU allocation failure),
frees caches, halves the batch and retries from the same item, so the concatenated result equals an
unbatched run for any function that treats rows independently.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from greekfire.core.errors import GreekfireError
from greekfire.core.metrics import counter, gauge
from greekfire.core.settings import GpuSettings, env_get, env_set

log = logging.getLogger(__name__)

MIB = 1024 * 1024
_oom_total = counter("greekfire_oom", "out-of-memory errors recovered from or raised, by device", ["device"])
_batch_gauge = gauge("greekfire_oom_batch_size", "batch size in use after the last OOM backoff, by device", ["device"])

_reserved_blocks: list[Any] = []  # keeps pre-allocated blocks alive when asked to hold them

F = TypeVar("F", bound=Callable[..., Any])


class GpuOutOfMemoryError(GreekfireError):
    """Even the smallest batch does not fit: names the device, the item and the sizes tried."""

    def __init__(self, device: str, item_index: int, n_items: int, tried: list[int], cause: BaseException) -> None:
        self.device = device
        self.item_index = item_index
        self.n_items = n_items
        self.tried = tried
        self.cause = cause
        super().__init__(
            f"out of memory on {device}: item {item_index} of {n_items} does not fit even in a batch of "
            f"{tried[-1]} (batch sizes tried: {', '.join(map(str, tried))}); last error: "
            f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}. "
            "Free memory on the device, lower gpu.memory_fraction use elsewhere, or choose a smaller model/input."
        )


def is_oom(exc: BaseException) -> bool:
    """True for a torch CUDA OOM, a Python/NumPy ``MemoryError`` or torch's CPU allocation failure."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(exc, RuntimeError):
        msg = str(exc).lower()
        return "out of memory" in msg or "can't allocate memory" in msg or "failed to allocate" in msg
    return False


def free_caches(full: bool = True) -> None:
    """Collect garbage and hand torch's cached CUDA blocks back to the driver (when CUDA is in use).

    ``full=False`` collects only the young generations (about 1 ms instead of 0.2 s with torch loaded),
    which is enough for the frames of a batch that just failed.
    """
    gc.collect(2 if full else 1)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def peak_allocated_bytes() -> int:
    """Peak GPU memory torch has allocated in this process (bytes); 0 where CUDA was never initialised."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return 0
    return int(torch.cuda.max_memory_allocated())


def _device_of(items: Any) -> str:
    dev = getattr(items, "device", None)
    return str(dev) if dev is not None else "cpu"


def _concat(parts: list[Any]) -> Any:
    if not parts:
        return []
    first = parts[0]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(first, torch.Tensor):
        return torch.cat(parts, dim=0)
    if type(first).__module__ == "numpy" or hasattr(first, "__array_interface__"):
        import numpy as np  # lazy: importing greekfire.gpu loads neither numpy nor torch

        return np.concatenate(parts, axis=0)
    out: list[Any] = []
    for p in parts:
        out.extend(p)
    return out


def run_with_oom_backoff(
    fn: Callable[[Any], Any],
    items: Sequence[Any] | Any,
    batch_size: int,
    *,
    min_batch_size: int = 1,
    device: str | None = None,
) -> Any:
    """Apply ``fn`` to ``items`` in batches of ``batch_size`` rows, halving the batch on out-of-memory.

    ``items`` is a tensor or array (sliced on dim 0) or a list; ``fn(batch)`` returns a tensor, array or
    list with one entry (row) per item. Results are concatenated in order, so they equal ``fn(items)``
    for a row-wise ``fn``. Each OOM counts ``greekfire_oom_total{device}``, frees caches and retries the
    same rows with half the batch; the smaller batch is kept for the rest of the run. At
    ``min_batch_size`` it runs a full garbage collection and tries once more, then raises
    :class:`GpuOutOfMemoryError` naming the device, the row and the sizes tried.
    ``device`` labels the metric and the error (default: ``items.device`` or ``cpu``).
    """
    if batch_size < 1 or min_batch_size < 1:
        raise GreekfireError(f"run_with_oom_backoff: batch_size={batch_size} and min_batch_size={min_batch_size} must be >= 1")
    dev = device or _device_of(items)
    _oom_total.labels(device=dev)  # the series exists (at 0) from the first use, so increase() sees the first OOM
    n = len(items)
    size = int(batch_size)
    tried = [size]
    parts: list[Any] = []
    start = 0
    last_chance_at = -1  # the row at which a full collection was already tried at the smallest batch
    while start < n:
        stop = min(start + size, n)
        try:
            parts.append(fn(items[start:stop]))
        except Exception as exc:  # MemoryError is an Exception; anything else is re-raised below
            if not is_oom(exc):
                raise
            _oom_total.labels(device=dev).inc()
            if size <= min_batch_size:
                if last_chance_at == start:
                    raise GpuOutOfMemoryError(dev, start, n, tried, exc) from exc
                # before giving up: one full garbage collection and one more try at the smallest batch
                last_chance_at = start
                free_caches(full=True)
                continue
            free_caches(full=False)
            size = max(min_batch_size, size // 2)
            tried.append(size)
            _batch_gauge.labels(device=dev).set(size)
            log.warning("out of memory on %s with a batch of %d rows: retrying with %d", dev, tried[-2], size,
                        extra={"device": dev, "batch_size": size})
            continue
        start = stop
    return _concat(parts)


def oom_counts() -> dict[str, float]:
    """``greekfire_oom_total`` of this process by device label (devices :func:`run_with_oom_backoff` ran on)."""
    out: dict[str, float] = {}
    for metric in _oom_total.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["device"]] = sample.value
    return out


def oom_backoff(batch_size: int, *, min_batch_size: int = 1, device: str | None = None) -> Callable[[F], F]:
    """Decorator form: ``@oom_backoff(1024)`` makes ``fn(items, *args)`` run in OOM-safe batches.

    Extra positional and keyword arguments are passed unchanged to every batch call.
    """

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def batched(items: Any, *args: Any, **kwargs: Any) -> Any:
            return run_with_oom_backoff(lambda b: fn(b, *args, **kwargs), items, batch_size,
                                        min_batch_size=min_batch_size, device=device)

        return batched  # type: ignore[return-value]

    return wrap


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _torch_policy(s: GpuSettings) -> str:
    notes: list[str] = []
    torch = sys.modules.get("torch")
    if s.expandable_segments:
        conf = env_get("PYTORCH_CUDA_ALLOC_CONF") or ""
        if "expandable_segments" not in conf:
            env_set("PYTORCH_CUDA_ALLOC_CONF", ",".join(p for p in (conf, "expandable_segments:True") if p))
        if torch is not None and torch.cuda.is_initialized():
            notes.append("PYTORCH_CUDA_ALLOC_CONF set after CUDA started: takes effect in new processes")
        else:
            notes.append(f"PYTORCH_CUDA_ALLOC_CONF={env_get('PYTORCH_CUDA_ALLOC_CONF')}")
    if s.memory_fraction is None and not s.preallocate_mb:
        return "; ".join(notes) or "defaults"
    import torch as torch_mod  # only a process that asked for a fraction or a reserve pays for the import

    env_set("PYTORCH_NVML_BASED_CUDA_CHECK", "1", overwrite=False)
    if not torch_mod.cuda.is_available():
        notes.append("no CUDA device: memory fraction and pre-allocation not applied")
        return "; ".join(notes)
    for i in range(torch_mod.cuda.device_count()):
        if s.memory_fraction is not None:
            torch_mod.cuda.set_per_process_memory_fraction(s.memory_fraction, i)
        if s.preallocate_mb:
            # allocate and drop: the caching allocator keeps the block reserved for this process
            block = torch_mod.empty(s.preallocate_mb * MIB, dtype=torch_mod.uint8, device=f"cuda:{i}")
            del block
    if s.memory_fraction is not None:
        notes.append(f"per-process memory fraction {s.memory_fraction} on {torch_mod.cuda.device_count()} device(s)")
    if s.preallocate_mb:
        notes.append(f"reserved {s.preallocate_mb} MiB per device in the caching allocator")
    return "; ".join(notes)


def apply_memory_policy(settings: GpuSettings | None = None) -> dict[str, str]:
    """Apply ``gpu.memory_fraction``, ``gpu.expandable_segments`` and ``gpu.preallocate_mb`` to each
    installed framework; returns ``{framework: what was done}`` (frameworks not installed are absent).

    Call it at process start, before the first CUDA allocation: allocator settings read at CUDA start
    (torch's ``PYTORCH_CUDA_ALLOC_CONF``, JAX's ``XLA_PYTHON_CLIENT_*``) do not change a running allocator.
    """
    s = settings or GpuSettings.model_validate({})
    done: dict[str, str] = {}
    if _installed("torch"):
        done["torch"] = _torch_policy(s)
    if _installed("cupy"):
        import cupy  # optional and heavy: imported only where it is installed

        if s.memory_fraction is not None:
            cupy.get_default_memory_pool().set_limit(fraction=s.memory_fraction)
            done["cupy"] = f"memory pool limit {s.memory_fraction} of device memory"
        else:
            done["cupy"] = "defaults"
    if _installed("jax"):
        env_set("XLA_PYTHON_CLIENT_PREALLOCATE", "true" if s.preallocate_mb else "false")
        if s.memory_fraction is not None:
            env_set("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{s.memory_fraction:.3f}")
        late = " (jax already imported: takes effect in new processes)" if "jax" in sys.modules else ""
        done["jax"] = (f"XLA_PYTHON_CLIENT_PREALLOCATE={env_get('XLA_PYTHON_CLIENT_PREALLOCATE')}, "
                       f"XLA_PYTHON_CLIENT_MEM_FRACTION={env_get('XLA_PYTHON_CLIENT_MEM_FRACTION')}{late}")
    if _installed("tensorflow"):
        import tensorflow as tf  # optional and heavy: imported only where it is installed

        gpus = tf.config.list_physical_devices("GPU")
        for g in gpus:
            try:
                tf.config.experimental.set_memory_growth(g, True)
            except RuntimeError:  # TF refuses once its devices are initialised
                done["tensorflow"] = "memory growth not set: TensorFlow already initialised its GPUs"
        done.setdefault("tensorflow", f"memory growth on {len(gpus)} GPU(s)")
    return done
