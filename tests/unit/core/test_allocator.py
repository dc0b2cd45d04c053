"""keep_freed_memory: repeated batch pricing stops page-faulting its fresh tensors in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from greekfire.core.allocator import keep_freed_memory

# eager European Greeks on 1M options, eight calls; prints the page faults of each call
CALLS = """
import resource, sys, torch
from greekfire.core.allocator import keep_freed_memory
from greekfire.quant import STANDARD_GREEKS, bsm_greeks
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    assert keep_freed_memory() == "ok"
n = 1_000_000
S = 100.0 + 10.0 * torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
full = lambda x: torch.full((n,), x, dtype=torch.float64)
args = (full(1.0), S, 1.05 * S, full(0.5), full(0.01), full(0.0), full(0.2))
out = None
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = None
    out = bsm_greeks(*args, names=STANDARD_GREEKS, compile=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _steady_faults(mode: str) -> float:
    env = dict(os.environ)
    if mode == "default":
        # glibc's default mmap threshold (128 KiB), held there: left alone, glibc raises it after the first
        # large free and settles anywhere from 0 to ~97k faults a call from run to run
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    out = subprocess.run([sys.executable, "-c", CALLS, mode], capture_output=True, text=True, timeout=300,
                         check=True, env=env)
    per_call = sorted(int(x) for x in out.stdout.split()[-5:])  # the last five calls: glibc has settled
    return per_call[2]  # the median


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_memory_is_not_faulted_in_again() -> None:
    default, kept = _steady_faults("default"), _steady_faults("keep")
    pages = 8_000_000 // 4096  # one 1M-element float64 tensor
    # every 8 MB block is mapped afresh and faulted in on each call at the default threshold (~200k pages a
    # call here); kept, the calls reuse the heap: mostly 0, but the OS re-faults a 2 MB region (488 pages)
    # now and then, on some machines in most calls. At least 95% of the faults must be gone.
    assert default > pages, default
    assert kept < default // 20, (kept, default)


def test_bad_values_are_refused_with_the_reason() -> None:
    assert "mmap_threshold_mb=64" in keep_freed_memory(mmap_threshold_mb=64)
    assert "trim_threshold_mb=1" in keep_freed_memory(mmap_threshold_mb=8, trim_threshold_mb=1)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_greekfire_commands_apply_it_by_default(tmp_settings_env) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from greekfire.cli import app
    from greekfire.core import allocator

    res = CliRunner().invoke(app, ["config", "show", "--json"])
    assert res.exit_code == 0, res.output
    assert '"keep_freed_memory": true' in res.output
    assert allocator._applied == (allocator.MAX_MMAP_THRESHOLD_MB, 512)
