"""CPU placement for the HFT processes: core affinity, NUMA nodes of cores and GPUs (from sysfs),
real-time priority, the garbage collector off on hot paths, and which cores take a NIC's interrupts.

Everything reads Linux's ``/sys`` and ``/proc``; where a file is missing (a container, another OS) the
functions answer with a neutral value (node 0, None, an empty report) instead of raising.

Example::

    from greekfire.hft import cpu
    cpu.pin(3)                                   # this process runs on CPU 3 only
    ok, why = cpu.set_realtime(50)               # SCHED_FIFO 50, or why not (needs CAP_SYS_NICE)
    with cpu.gc_frozen():
        run_hot_loop()                           # no collector pauses in here
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SYS = Path("/sys")
PROC = Path("/proc")
# NIC queue interrupts by driver name where sysfs does not tie the IRQ to an interface
NIC_IRQ_PATTERN = re.compile(r"\b(mlx\d|mlx5_comp|ixgbe|i40e|ice|bnxt|ena|virtio\d+-(input|output)\.\d+)|-TxRx-", re.IGNORECASE)


def pin(cpu: int | None) -> int | None:
    """Run this process on CPU ``cpu`` only (``os.sched_setaffinity``); None leaves the affinity as it is.
    Returns the CPU pinned to, or None. ValueError (from the OS) for a CPU this process may not use."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    os.sched_setaffinity(0, {int(cpu)})
    return int(cpu)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def parse_cpu_list(text: str) -> list[int]:
    """``0-3,8,10-11`` -> [0, 1, 2, 3, 8, 10, 11] (the kernel's CPU list format); empty for ''."""
    out: list[int] = []
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def numa_nodes(sys_root: Path = SYS) -> dict[int, list[int]]:
    """NUMA node -> its CPUs, from ``/sys/devices/system/node/node*/cpulist``; ``{0: all CPUs}`` where the
    kernel shows no nodes."""
    nodes: dict[int, list[int]] = {}
    for d in sorted((sys_root / "devices/system/node").glob("node[0-9]*")):
        text = _read(d / "cpulist")
        if text is not None:
            nodes[int(d.name[4:])] = parse_cpu_list(text)
    return nodes or {0: list(range(os.cpu_count() or 1))}


def numa_node_of_cpu(cpu: int, sys_root: Path = SYS) -> int:
    """The NUMA node of CPU ``cpu`` (the ``node<N>`` link in ``/sys/devices/system/cpu/cpu<cpu>/``); 0 when
    the kernel shows none (one node, or no NUMA information)."""
    for entry in (sys_root / f"devices/system/cpu/cpu{cpu}").glob("node[0-9]*"):
        return int(entry.name[4:])
    for node, cpus in numa_nodes(sys_root).items():
        if cpu in cpus:
            return node
    return 0


def pci_numa_node(bus_id: str, sys_root: Path = SYS) -> int | None:
    """NUMA node of a PCI device by bus id (NVML's ``00000000:3B:00.0`` or ``0000:3b:00.0``) from
    ``/sys/bus/pci/devices/<id>/numa_node``; None when unknown (the kernel writes -1 on one-node machines)."""
    b = bus_id.strip().lower()
    parts = b.split(":")
    if len(parts) == 3:
        parts[0] = parts[0][-4:].rjust(4, "0")
    elif len(parts) == 2:
        parts.insert(0, "0000")
    text = _read(sys_root / "bus/pci/devices" / ":".join(parts) / "numa_node")
    try:
        node = int(text) if text is not None else -1
    except ValueError:
        return None
    return node if node >= 0 else None


def numa_node_of_gpu(index: int, devices: list[Any] | None = None, sys_root: Path = SYS) -> int | None:
    """NUMA node of GPU ``index`` (the NVML/amdsmi index of :func:`greekfire.gpu.discovery.discover`), from
    the PCI bus id it reports; None without that GPU or where sysfs does not say."""
    if devices is None:
        from greekfire.gpu.discovery import discover

        devices = discover().devices
    for d in devices:
        if getattr(d, "kind", "cpu") != "cpu" and d.index == index and d.pci_bus_id:
            return pci_numa_node(d.pci_bus_id, sys_root)
    return None


def cpus_near_gpu(index: int, devices: list[Any] | None = None, sys_root: Path = SYS) -> list[int]:
    """The CPUs this process may use near GPU ``index``: NVML's CPU affinity of the device
    (:func:`greekfire.gpu.topology.cpu_affinity`), else the CPUs of its NUMA node from sysfs, else all
    allowed CPUs. The HFT worker of a GPU pins to one of these."""
    from greekfire.gpu.topology import allowed_cpus, cpu_affinity

    if devices is None:
        from greekfire.gpu.discovery import discover

        devices = discover().devices
    allowed = allowed_cpus()
    dev = next((d for d in devices if getattr(d, "kind", "cpu") != "cpu" and d.index == index), None)
    if dev is not None:
        near = cpu_affinity(dev)
        if near and near != allowed:
            return sorted(near)
    node = numa_node_of_gpu(index, devices, sys_root)
    if node is None:
        return sorted(allowed)
    return sorted(set(numa_nodes(sys_root).get(node, [])) & allowed) or sorted(allowed)


def set_realtime(priority: int = 50) -> tuple[bool, str]:
    """Put this process under ``SCHED_FIFO`` at ``priority`` (1-99). Returns (True, what was set) or
    (False, why not): it needs ``CAP_SYS_NICE`` (root, ``setcap cap_sys_nice+ep``, or an ``rtprio`` limit in
    /etc/security/limits.conf; in a container ``--cap-add SYS_NICE``). A FIFO process that never sleeps
    keeps its core from everything else: use it on isolated cores only."""
    if not hasattr(os, "sched_setscheduler"):
        return False, "SCHED_FIFO is not available on this OS (os.sched_setscheduler missing)"
    lo, hi = os.sched_get_priority_min(os.SCHED_FIFO), os.sched_get_priority_max(os.SCHED_FIFO)
    if not lo <= priority <= hi:
        return False, f"priority {priority} is outside SCHED_FIFO's {lo}..{hi}"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        return False, (f"SCHED_FIFO {priority} not permitted: the process lacks CAP_SYS_NICE (run as root, "
                       "`setcap cap_sys_nice+ep` on the interpreter, raise `rtprio` in limits.conf, or "
                       "`--cap-add SYS_NICE` in a container); running at normal priority")
    except OSError as exc:  # e.g. EINVAL from a kernel without RT scheduling or RT throttling in a cgroup
        return False, f"SCHED_FIFO {priority} refused by the kernel: {exc}; running at normal priority"
    return True, f"SCHED_FIFO priority {priority}"


def set_normal() -> None:
    """Back to ``SCHED_OTHER`` (undoes :func:`set_realtime`)."""
    if hasattr(os, "sched_setscheduler"):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


@contextmanager
def gc_frozen() -> Iterator[None]:
    """Within the block the cyclic garbage collector does not run: what exists is frozen (moved out of the
    collector's generations, ``gc.freeze``) and collection is disabled; both are restored after. Objects
    made inside are freed by reference counting as usual; cycles made inside wait until after."""
    was_enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def nic_irqs(sys_root: Path = SYS) -> dict[int, str]:
    """IRQ number -> network interface, from each interface's PCI device's ``msi_irqs`` folder in sysfs
    (``/sys/class/net/<if>/device``, or its parent for virtio); empty where sysfs does not say."""
    out: dict[int, str] = {}
    for iface in sorted((sys_root / "class/net").glob("*")):
        dev = iface / "device"
        if not dev.exists():
            continue
        d = dev.resolve()
        for cand in (d, d.parent):
            msi = cand / "msi_irqs"
            if msi.is_dir():
                for e in msi.iterdir():
                    if e.name.isdigit():
                        out[int(e.name)] = iface.name
                break
    return out


def irq_report(proc_root: Path = PROC, sys_root: Path = SYS,
               pattern: re.Pattern[str] = NIC_IRQ_PATTERN) -> list[dict[str, Any]]:
    """The network interrupts of this machine from ``/proc/interrupts``: one dict per IRQ with ``irq``,
    ``iface`` (from :func:`nic_irqs`, or an interface name in the line; None when only ``pattern`` matched),
    ``name`` (the rest of the line: controller, queue), ``counts`` (per CPU), ``cpus`` (CPUs that have taken
    it) and ``affinity`` (``/proc/irq/<n>/smp_affinity_list``, None where unreadable). Empty where
    /proc/interrupts is missing."""
    text = _read(proc_root / "interrupts")
    if not text:
        return []
    by_irq = nic_irqs(sys_root)
    ifaces = sorted(set(by_irq.values()) | {p.name for p in (sys_root / "class/net").glob("*")} - {"lo"},
                    key=len, reverse=True)
    lines = text.splitlines()
    ncpu = len(lines[0].split())
    out: list[dict[str, Any]] = []
    for line in lines[1:]:
        head, _, rest = line.partition(":")
        irq = head.strip()
        if not irq.isdigit():
            continue
        fields = rest.split()
        counts = [int(f) for f in fields[:ncpu] if f.isdigit()]
        name = " ".join(fields[len(counts):])
        iface = by_irq.get(int(irq)) or next((i for i in ifaces if re.search(rf"\b{re.escape(i)}\b", name)), None)
        if iface is None and not pattern.search(name):
            continue
        out.append({"irq": int(irq), "iface": iface, "name": name, "counts": counts,
                    "cpus": [c for c, k in enumerate(counts) if k > 0],
                    "affinity": _read(proc_root / "irq" / irq / "smp_affinity_list")})
    return out
