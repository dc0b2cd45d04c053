"""Optional fusion of elementwise kernels with ``torch.compile``.

Eager torch runs each elementwise operation as its own pass over memory; compiling a kernel fuses them
into one loop, several times faster on large batches. Compilation costs seconds once per kernel (and
needs a C compiler on CPU), so only batches of at least ``min_size`` elements take the compiled path,
and any failure to compile falls back to eager for good.

A caller that knows the compile would be cold (the first run on a machine: minutes of code generation)
can price eagerly instead inside :func:`eager_until_compiled`, which records the kernels that would have
been compiled, so that it can compile them elsewhere (another process) for next time. A caller can also
be told, once per kernel, just before a compile starts (:func:`on_compile`), to show a notice.

Kernels are traced with Python float constants specialised: with ``dynamic=True`` dynamo otherwise turns
every module-level float (a polynomial coefficient, 1/sqrt(2)) into a 0-d tensor input, which blocks
constant folding and counts as a buffer read, so inductor splits large kernels and materialises
intermediates in memory (seen: 5 extra 1M-element buffers and a second loop in the Greeks kernel).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

log = logging.getLogger(__name__)

DEFAULT_MIN_SIZE = 1_000_000
# variants of one kernel (dtype, keyword arguments such as the Greeks asked for, torch thread count)
# each compile once; past dynamo's default limit of 8 a kernel would silently run eager
_RECOMPILE_LIMIT = 64

_lock = threading.Lock()
_compiled: dict[Callable[..., Any], Callable[..., Any] | None] = {}
_started: set[Callable[..., Any]] = set()  # kernels whose compiled version has been called in this process
# inside eager_until_compiled: (the names of the kernels that ran eagerly instead of compiling, on_want,
# ready, [time of the last ready check])
_Eager = tuple[set[str], Callable[[str], None] | None, Callable[[], bool] | None, list[float]]
_eager: ContextVar[_Eager | None] = ContextVar("greekfire_fused_eager", default=None)
_notice: ContextVar[Callable[[str], None] | None] = ContextVar("greekfire_fused_notice", default=None)
READY_POLL_S = 1.0


@contextmanager
def eager_until_compiled(
    on_want: Callable[[str], None] | None = None, ready: Callable[[], bool] | None = None
) -> Iterator[set[str]]:
    """Within this block, kernels that would be compiled by default (``compile=None`` on a large batch)
    run eagerly instead, with the same results; yields the set of the names of those kernels (empty when
    nothing would have compiled). ``on_want(name)`` is called when a kernel is first in that set;
    ``ready()`` is polled (at most once a second) and once it returns True the block compiles as usual
    (e.g. when another process has filled the compile cache). ``compile=True`` still compiles."""
    wanted: set[str] = set()
    token = _eager.set((wanted, on_want, ready, [0.0]))
    try:
        yield wanted
    finally:
        _eager.reset(token)


@contextmanager
def on_compile(callback: Callable[[str], None]) -> Iterator[None]:
    """Within this block, call ``callback(kernel name)`` once per kernel before its first compiled call in
    this process (the call that traces it and compiles it, or loads it from the compile cache)."""
    token = _notice.set(callback)
    try:
        yield
    finally:
        _notice.reset(token)


def _compiled_version(fn: Callable[..., Any]) -> Callable[..., Any] | None:
    with _lock:
        if fn not in _compiled:
            try:
                _compiled[fn] = torch.compile(fn, dynamic=True, fullgraph=True)
            except Exception as exc:  # torch.compile missing or unsupported here
                log.info("torch.compile unavailable (%s); using eager kernels", exc)
                _compiled[fn] = None
        return _compiled[fn]


def wants_compile(compile: bool | None, numel: int, name: str) -> bool:
    """Whether a kernel ``name`` over ``numel`` elements takes the compiled path: ``compile`` when given,
    else whether ``numel`` is at least :data:`DEFAULT_MIN_SIZE`, except inside :func:`eager_until_compiled`
    (there: False, and ``name`` is recorded)."""
    if compile is not None:
        return compile
    if numel < DEFAULT_MIN_SIZE:
        return False
    eager = _eager.get()
    if eager is None:
        return True
    wanted, on_want, ready, last = eager
    if ready is not None:
        now = time.monotonic()
        if now - last[0] >= READY_POLL_S:
            last[0] = now
            if ready():
                _eager.set(None)
                return True
    if name not in wanted:
        wanted.add(name)
        if on_want is not None:
            on_want(name)
    return False


def run_kernel(
    fn: Callable[..., Any], args: tuple[torch.Tensor, ...], *, compile: bool | None, numel: int, **kwargs: Any
) -> Any:
    """Run ``fn(*args, **kwargs)``, compiled when ``compile`` is True, or None and ``numel`` is large."""
    use = wants_compile(compile, numel, fn.__name__)
    if use and not any(a.requires_grad for a in args):
        cfn = _compiled_version(fn)
        if cfn is not None:
            notice = _notice.get()
            if notice is not None and fn not in _started:
                notice(fn.__name__)
            _started.add(fn)
            try:
                with torch._dynamo.config.patch(specialize_float=True, recompile_limit=_RECOMPILE_LIMIT):
                    return cfn(*args, **kwargs)
            except Exception as exc:  # e.g. no C compiler: remember and fall back
                log.warning("compiled kernel %s failed (%s); falling back to eager", fn.__name__, exc)
                with _lock:
                    _compiled[fn] = None
    return fn(*args, **kwargs)
