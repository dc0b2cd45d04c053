from __future__ import annotations

import numpy as np
import pytest
import torch

from greekfire.core.metrics import sample_value
from greekfire.core.settings import GpuSettings, env_get
from greekfire.gpu.memory import (
    GpuOutOfMemoryError,
    apply_memory_policy,
    is_oom,
    oom_backoff,
    run_with_oom_backoff,
)


def oom_above(k: int, calls: list[int], kind: str = "cuda"):  # type: ignore[no-untyped-def]
    """A row-wise function that runs out of memory on batches larger than ``k`` rows."""

    def fn(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        if len(batch) > k:
            if kind == "cuda":
                raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(batch) * 8} MiB")
            if kind == "cpu":
                raise RuntimeError(f"[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                                   f"you tried to allocate {len(batch) << 30} bytes")
            raise MemoryError()
        return torch.exp(batch) * 2.0 + batch.sum(dim=1, keepdim=True) * 0.0

    return fn


@pytest.mark.parametrize("kind", ["cuda", "cpu", "memoryerror"])
def test_backoff_equals_unbatched_and_counts(kind: str) -> None:
    x = torch.randn(1000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = torch.exp(x) * 2.0
    label = {"device": f"test-{kind}"}
    before = sample_value("greekfire_oom_total", label) or 0.0
    calls: list[int] = []
    out = run_with_oom_backoff(oom_above(100, calls, kind), x, batch_size=512, device=label["device"])
    assert torch.equal(out, expected)
    # 512 -> 256 -> 128 -> 64 (three OOMs), then batches of 64 to the end
    assert calls[:4] == [512, 256, 128, 64] and set(calls[4:]) <= {64, 1000 % 64}
    assert sample_value("greekfire_oom_total", label) == before + 3
    assert sample_value("greekfire_oom_batch_size", label) == 64


def test_fails_at_batch_one_with_clear_error() -> None:
    x = torch.ones(10, 2)
    calls: list[int] = []
    before = sample_value("greekfire_oom_total", {"device": "cpu"}) or 0.0
    with pytest.raises(GpuOutOfMemoryError) as info:
        run_with_oom_backoff(oom_above(0, calls), x, batch_size=4)
    err = info.value
    msg = str(err)
    assert err.device == "cpu" and err.tried == [4, 2, 1] and err.item_index == 0
    assert "out of memory on cpu" in msg and "item 0 of 10" in msg and "4, 2, 1" in msg
    assert isinstance(err.cause, torch.cuda.OutOfMemoryError)
    assert calls == [4, 2, 1, 1]  # one last try at a single row after a full garbage collection
    assert sample_value("greekfire_oom_total", {"device": "cpu"}) == before + 4


def test_lists_arrays_and_decorator() -> None:
    @oom_backoff(8)
    def square(batch: list[int], offset: int = 0) -> list[int]:
        if len(batch) > 3:
            raise MemoryError("no room")
        return [v * v + offset for v in batch]

    assert square(list(range(20)), offset=1) == [v * v + 1 for v in range(20)]
    arr = np.arange(30.0).reshape(15, 2)
    out = run_with_oom_backoff(lambda b: np.sqrt(b), arr, batch_size=4)
    assert np.array_equal(out, np.sqrt(arr))
    assert run_with_oom_backoff(lambda b: b, [], batch_size=4) == []


def test_other_errors_propagate_untouched() -> None:
    def bad(batch: list[int]) -> list[int]:
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        run_with_oom_backoff(bad, [1, 2, 3], batch_size=2)
    assert not is_oom(RuntimeError("shape mismatch")) and is_oom(RuntimeError("CUDA error: out of memory"))


def test_memory_policy_only_installed_frameworks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    done = apply_memory_policy(GpuSettings(expandable_segments=True, memory_fraction=0.5, preallocate_mb=16))
    assert env_get("PYTORCH_CUDA_ALLOC_CONF") == "max_split_size_mb:128,expandable_segments:True"
    assert "torch" in done and "no CUDA device" in done["torch"]  # this machine has none
    import importlib.util

    for framework in ("cupy", "jax", "tensorflow"):
        assert (framework in done) == (importlib.util.find_spec(framework) is not None)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    done = apply_memory_policy(GpuSettings(expandable_segments=False))
    assert env_get("PYTORCH_CUDA_ALLOC_CONF") is None and done["torch"] == "defaults"


def test_the_oom_series_exists_from_the_first_use_and_is_counted_by_device() -> None:
    from greekfire.gpu.memory import oom_counts

    label = {"device": "cpu:series-test"}
    assert sample_value("greekfire_oom_total", label) is None
    out = run_with_oom_backoff(lambda b: [v * 2 for v in b], [1, 2, 3], batch_size=2, device=label["device"])
    assert out == [2, 4, 6]
    assert sample_value("greekfire_oom_total", label) == 0.0  # no OOM, but the series is there for increase()
    assert oom_counts()[label["device"]] == 0.0
