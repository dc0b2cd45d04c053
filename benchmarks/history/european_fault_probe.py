"""One fresh process: the European rows' first two timings as bench_quant.py takes them (eager, then
compiled, one thread, glibc's default allocator), with the page faults taken during the compiled timing and
glibc's heap figures after it, as one JSON line.

    python benchmarks/history/european_fault_probe.py CHECKOUT   # with CHECKOUT/src on PYTHONPATH

Run it several times per checkout: which of the two modes a process lands in (outputs faulted in again on
every call, or kept in the heap) is decided by the heap's layout, and it changes from process to process.
"""

from __future__ import annotations

import ctypes
import json
import resource
import sys

import torch

torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import bench_quant as bq  # noqa: E402


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


g = bq.grid(bq.N, seed=1)
bq.time_greeks(g, compile=False, device="cpu", names=bq.STANDARD_GREEKS)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rate, _ = bq.time_greeks(g, compile=True, device="cpu", names=bq.STANDARD_GREEKS)
f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
m = libc.mallinfo2()
print(json.dumps({"options_per_s_M": round(rate / 1e6, 1), "page_faults": f1 - f0, "heap_MB": m.arena >> 20,
                  "heap_free_MB": m.fordblks >> 20, "trimmable_top_MB": m.keepcost >> 20}))
