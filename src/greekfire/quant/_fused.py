"""Optional fusion of elementwise kernels with ``torch.compile``.

Eager torch runs each elementwise operation as its own pass over memory; compiling a kernel fuses them
into one loop, several times faster on large batches. Compilation costs seconds once per kernel (and
needs a C compiler on CPU), so only batches of at least ``min_size`` elements take the compiled path,
and any failure to compile falls back to eager for good.

Kernels are traced with Python float constants specialised: with ``dynamic=True`` dynamo otherwise turns
every module-level float (a polynomial coefficient, 1/sqrt(2)) into a 0-d tensor input, which blocks
constant folding and counts as a buffer read, so inductor splits large kernels and materialises
intermediates in memory (seen: 5 extra 1M-element buffers and a second loop in the Greeks kernel).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

DEFAULT_MIN_SIZE = 1_000_000
# variants of one kernel (dtype, keyword arguments such as the Greeks asked for, torch thread count)
# each compile once; past dynamo's default limit of 8 a kernel would silently run eager
_RECOMPILE_LIMIT = 64

_lock = threading.Lock()
_compiled: dict[Callable[..., Any], Callable[..., Any] | None] = {}


def _compiled_version(fn: Callable[..., Any]) -> Callable[..., Any] | None:
    with _lock:
        if fn not in _compiled:
            try:
                _compiled[fn] = torch.compile(fn, dynamic=True, fullgraph=True)
            except Exception as exc:  # torch.compile missing or unsupported here
                log.info("torch.compile unavailable (%s); using eager kernels", exc)
                _compiled[fn] = None
        return _compiled[fn]


def run_kernel(
    fn: Callable[..., Any], args: tuple[torch.Tensor, ...], *, compile: bool | None, numel: int, **kwargs: Any
) -> Any:
    """Run ``fn(*args, **kwargs)``, compiled when ``compile`` is True, or None and ``numel`` is large."""
    use = compile if compile is not None else numel >= DEFAULT_MIN_SIZE
    if use and not any(a.requires_grad for a in args):
        cfn = _compiled_version(fn)
        if cfn is not None:
            try:
                with torch._dynamo.config.patch(specialize_float=True, recompile_limit=_RECOMPILE_LIMIT):
                    return cfn(*args, **kwargs)
            except Exception as exc:  # e.g. no C compiler: remember and fall back
                log.warning("compiled kernel %s failed (%s); falling back to eager", fn.__name__, exc)
                with _lock:
                    _compiled[fn] = None
    return fn(*args, **kwargs)
