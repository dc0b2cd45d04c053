"""Multi-GPU topology and CPU affinity.

:func:`topology_matrix` labels each GPU pair the way ``nvidia-smi topo -m`` does (PIX, PXB, PHB, NODE,
SYS) from ``nvmlDeviceGetTopologyCommonAncestor``, with the peer-to-peer read status beside it.
:func:`cpu_affinity` is the NVML CPU mask of a device intersected with this process's allowed CPUs, and
:func:`pin_process_to` applies it, so host-side work runs on the GPU's own NUMA node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from greekfire.gpu.discovery import DeviceInfo
from greekfire.gpu.nvml import NvmlSession, is_nvml_error

# NVML common-ancestor levels -> nvidia-smi topo labels
_LEVEL_LABELS = {0: "X", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}


@dataclass(slots=True, frozen=True)
class TopologyMatrix:
    """``links[i][j]``: label of the path between GPUs i and j; ``p2p[i][j]``: peer-to-peer reads work.

    ``uuids[i]`` names row/column i (NVML order).
    """

    uuids: list[str]
    links: list[list[str]]
    p2p: list[list[bool]]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"uuids": self.uuids, "links": self.links, "p2p": self.p2p}


def _p2p_read_index(nvml: Any) -> int:
    idx = nvml.NVML_P2P_CAPS_INDEX_READ
    return int(idx[0] if isinstance(idx, tuple) else idx)  # some bindings define it as a 1-tuple


def topology_matrix(nvml: Any | None = None) -> TopologyMatrix:
    """The GPU-to-GPU topology through NVML; an empty matrix without NVML or GPUs."""
    with NvmlSession(nvml) as session:
        if not session.ok:
            return TopologyMatrix([], [], [])
        nv = session.nvml
        handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
        uuids = [str(nv.nvmlDeviceGetUUID(h)) for h in handles]
        n = len(handles)
        links = [["X"] * n for _ in range(n)]
        p2p = [[i == j for j in range(n)] for i in range(n)]
        read = _p2p_read_index(nv)
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                try:
                    level = int(nv.nvmlDeviceGetTopologyCommonAncestor(handles[i], handles[j]))
                    links[i][j] = _LEVEL_LABELS.get(level, f"L{level}")
                except Exception as exc:
                    if not is_nvml_error(exc, nv):
                        raise
                    links[i][j] = "?"
                try:
                    p2p[i][j] = int(nv.nvmlDeviceGetP2PStatus(handles[i], handles[j], read)) == nv.NVML_P2P_STATUS_OK
                except Exception as exc:
                    if not is_nvml_error(exc, nv):
                        raise
        return TopologyMatrix(uuids, links, p2p)


def allowed_cpus() -> set[int]:
    """CPUs this process may run on (``os.sched_getaffinity``; all CPUs where that is missing)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def mask_to_cpus(words: Any, bits_per_word: int = 64) -> set[int]:
    """CPU numbers set in an NVML affinity mask (a sequence of 64-bit words, lowest CPUs first)."""
    cpus: set[int] = set()
    for w, word in enumerate(words):
        value = int(word)
        b = 0
        while value:
            if value & 1:
                cpus.add(w * bits_per_word + b)
            value >>= 1
            b += 1
    return cpus


def cpu_affinity(device: DeviceInfo, nvml: Any | None = None) -> set[int]:
    """CPUs close to ``device`` that this process may use; all allowed CPUs for the CPU device or on error.

    An empty intersection (the GPU's node is outside our cgroup) also falls back to all allowed CPUs.
    """
    allowed = allowed_cpus()
    if device.kind != "nvidia":
        return allowed
    with NvmlSession(nvml) as session:
        if not session.ok:
            return allowed
        nv = session.nvml
        words = max(1, (max(allowed | {os.cpu_count() or 1}) + 64) // 64)
        try:
            h = nv.nvmlDeviceGetHandleByIndex(device.index)
            near = mask_to_cpus(nv.nvmlDeviceGetCpuAffinity(h, words))
        except Exception as exc:
            if not is_nvml_error(exc, nv):
                raise
            return allowed
    return (near & allowed) or allowed


def pin_process_to(device: DeviceInfo, nvml: Any | None = None) -> set[int]:
    """Restrict this process to the CPUs near ``device``; returns the CPU set applied."""
    cpus = cpu_affinity(device, nvml)
    if hasattr(os, "sched_setaffinity") and cpus:
        os.sched_setaffinity(0, cpus)
    return cpus
