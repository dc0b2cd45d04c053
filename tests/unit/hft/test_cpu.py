"""CPU placement: pinning, NUMA nodes from sysfs (this machine's and a made-up two-node tree), real-time
priority, the frozen collector and the NIC interrupt report."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
from pathlib import Path

from greekfire.gpu.discovery import DeviceInfo
from greekfire.hft import cpu

CTX = mp.get_context("fork")


def _in_child(fn, *args):
    """Run ``fn(*args)`` in a forked child (pinning and scheduling changes stay there); its result."""
    recv, send = CTX.Pipe(duplex=False)

    def target() -> None:
        try:
            send.send(("ok", fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - carried back to the test
            send.send(("err", repr(exc)))

    p = CTX.Process(target=target)
    p.start()
    try:
        assert recv.poll(60), "child did not answer"
        return recv.recv()
    finally:
        p.join(30)


def _pin_and_read(c: int | None):
    return cpu.pin(c), sorted(os.sched_getaffinity(0))


def test_parse_cpu_list() -> None:
    assert cpu.parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert cpu.parse_cpu_list("") == []


def test_pin_restricts_the_process() -> None:
    target = max(os.sched_getaffinity(0))
    assert _in_child(_pin_and_read, target) == ("ok", (target, [target]))
    status, (pinned, cpus) = _in_child(_pin_and_read, None)
    assert status == "ok" and pinned is None and cpus == sorted(os.sched_getaffinity(0))


def _two_node_tree(root: Path) -> Path:
    sysfs = root / "sys"
    for node, cpus in ((0, "0-1"), (1, "2-3")):
        d = sysfs / f"devices/system/node/node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
        for c in cpu.parse_cpu_list(cpus):
            cd = sysfs / f"devices/system/cpu/cpu{c}"
            cd.mkdir(parents=True)
            (cd / f"node{node}").mkdir()  # the kernel's link to the node
    for bdf, node in (("0000:3b:00.0", "1"), ("0000:af:00.0", "-1")):
        d = sysfs / "bus/pci/devices" / bdf
        d.mkdir(parents=True)
        (d / "numa_node").write_text(node + "\n")
    return sysfs


def test_numa_nodes_of_cpus_and_gpus_from_sysfs(tmp_path: Path) -> None:
    sysfs = _two_node_tree(tmp_path)
    assert cpu.numa_nodes(sysfs) == {0: [0, 1], 1: [2, 3]}
    assert [cpu.numa_node_of_cpu(c, sysfs) for c in range(4)] == [0, 0, 1, 1]
    assert cpu.pci_numa_node("00000000:3B:00.0", sysfs) == 1  # NVML's form
    assert cpu.pci_numa_node("0000:3b:00.0", sysfs) == 1  # CUDA's form
    assert cpu.pci_numa_node("0000:af:00.0", sysfs) is None  # the kernel's -1: unknown
    assert cpu.pci_numa_node("0000:01:00.0", sysfs) is None  # no such device
    gpus = [DeviceInfo(kind="cpu", index=-1, name="cpu"),
            DeviceInfo(kind="nvidia", index=0, name="A", pci_bus_id="00000000:3B:00.0"),
            DeviceInfo(kind="nvidia", index=1, name="B", pci_bus_id="00000000:AF:00.0")]
    assert cpu.numa_node_of_gpu(0, gpus, sysfs) == 1
    assert cpu.numa_node_of_gpu(1, gpus, sysfs) is None
    assert cpu.numa_node_of_gpu(5, gpus, sysfs) is None


def test_numa_on_this_machine() -> None:
    nodes = cpu.numa_nodes()
    for c in sorted(os.sched_getaffinity(0)):
        assert cpu.numa_node_of_cpu(c) in nodes
    near = cpu.cpus_near_gpu(0)  # no GPU here (or one): a non-empty list of CPUs we may use
    assert near and set(near) <= set(os.sched_getaffinity(0))


def _realtime(priority: int):
    ok, why = cpu.set_realtime(priority)
    return ok, why, os.sched_getscheduler(0) == os.SCHED_FIFO


def test_set_realtime_sets_fifo_or_says_why() -> None:
    status, (ok, why, fifo) = _in_child(_realtime, 10)
    assert status == "ok"
    if ok:
        assert fifo and "SCHED_FIFO" in why
    else:
        assert not fifo and ("CAP_SYS_NICE" in why or "refused" in why)
    status, (ok, why, fifo) = _in_child(_realtime, 500)
    assert (ok, fifo) == (False, False) and "outside" in why


def test_gc_frozen_restores_the_collector() -> None:
    assert gc.isenabled()
    with cpu.gc_frozen():
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0
        junk = [[] for _ in range(10)]
        assert len(junk) == 10
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        with cpu.gc_frozen():
            pass
        assert not gc.isenabled()  # it was off before: stays off
    finally:
        gc.enable()


def test_irq_report_finds_the_nic_queues(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    sysfs = tmp_path / "sys"
    proc.mkdir()
    (proc / "interrupts").write_text(
        "           CPU0       CPU1       CPU2\n"
        "  0:         40          0          0   IO-APIC   2-edge      timer\n"
        " 38:          0      15059          0   PCI-MSIX-0000:00:03.0 1-edge      virtio2-input.0\n"
        " 90:          5          0        700   IR-PCI-MSI 524288-edge      ens1f0-TxRx-0\n"
        " 91:          0          0          0   IR-PCI-MSI 524289-edge      mlx5_comp1@pci:0000:3b:00.0\n"
        "NMI:          0          0          0   Non-maskable interrupts\n"
    )
    (proc / "irq/90").mkdir(parents=True)
    (proc / "irq/90/smp_affinity_list").write_text("2\n")
    pci = sysfs / "devices/pci0000:00/0000:00:03.0"
    (pci / "msi_irqs").mkdir(parents=True)
    (pci / "msi_irqs/38").write_text("msix\n")
    (pci / "virtio2").mkdir()
    (sysfs / "class/net/eth0").mkdir(parents=True)
    (sysfs / "class/net/eth0/device").symlink_to(pci / "virtio2")
    (sysfs / "class/net/ens1f0").mkdir(parents=True)
    rows = {r["irq"]: r for r in cpu.irq_report(proc, sysfs)}
    assert sorted(rows) == [38, 90, 91]
    assert rows[38]["iface"] == "eth0" and rows[38]["cpus"] == [1]  # from the device's msi_irqs
    assert rows[90]["iface"] == "ens1f0" and rows[90]["affinity"] == "2" and rows[90]["cpus"] == [0, 2]
    assert rows[91]["iface"] is None and rows[91]["counts"] == [0, 0, 0]  # by driver name only
    assert cpu.irq_report(tmp_path / "nothing", sysfs) == []


def test_irq_report_on_this_machine() -> None:
    for r in cpu.irq_report():
        assert set(r) == {"irq", "iface", "name", "counts", "cpus", "affinity"}
        assert all(k >= 0 for k in r["counts"])


def test_pin_to_a_cpu_we_may_not_use() -> None:
    status, msg = _in_child(cpu.pin, -1)
    assert status == "err" and ("ValueError" in msg or "OSError" in msg)


def test_cpus_near_a_gpu_from_its_numa_node(tmp_path: Path) -> None:
    mine = min(os.sched_getaffinity(0))
    sysfs = tmp_path / "sys"
    for node, cpus in ((0, "1000-1001"), (1, str(mine))):
        d = sysfs / f"devices/system/node/node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
    pci = sysfs / "bus/pci/devices/0000:3b:00.0"
    pci.mkdir(parents=True)
    (pci / "numa_node").write_text("1\n")
    # index 7: no such GPU for NVML here, so the answer comes from the NUMA node in sysfs
    gpus = [DeviceInfo(kind="nvidia", index=7, name="A", pci_bus_id="00000000:3B:00.0")]
    assert cpu.cpus_near_gpu(7, gpus, sysfs) == [mine]
    assert cpu.cpus_near_gpu(8, gpus, sysfs) == sorted(os.sched_getaffinity(0))  # unknown GPU: all we may use
