"""``greekfire hft doctor``: this machine's settings against what a low-latency deployment wants.

:func:`checks` reads ``/proc`` and ``/sys`` only and changes nothing. Each :class:`Check` has the value
found, the recommended value, whether it passes and the command or sysctl that fixes it. A file the
machine does not have (a container, a VM, another OS) gives the value ``unknown`` with the reason, never
an exception.

Example::

    from greekfire.hft.doctor import checks
    for c in checks():
        print(("ok " if c.ok else "FIX"), c.name, c.value, "->", c.recommended, "|", c.fix)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from greekfire.hft import cpu

SYS = Path("/sys")
PROC = Path("/proc")
UNKNOWN = "unknown"
SYSCTL_FILE = "/etc/sysctl.d/90-greekfire-hft.conf"

# sysctl -> (minimum recommended, why)
SYSCTL_MIN = {
    "net.core.rmem_max": (16 << 20, "largest receive buffer a socket may ask for (feed bursts)"),
    "net.core.wmem_max": (16 << 20, "largest send buffer a socket may ask for"),
    "net.core.rmem_default": (4 << 20, "receive buffer of a socket that does not ask"),
    "net.core.netdev_max_backlog": (250_000, "packets queued per CPU before the stack drops"),
    "net.core.busy_poll": (50, "µs a poll/select busy-polls the NIC queue instead of sleeping"),
    "net.core.busy_read": (50, "µs a blocking read busy-polls the NIC queue"),
}


@dataclass(slots=True)
class Check:
    """One setting: ``value`` found (``unknown`` with ``reason`` where it cannot be read), ``recommended``,
    ``ok``, and ``fix``: the command that sets it (the doctor never runs it)."""

    name: str
    value: str
    recommended: str
    ok: bool
    fix: str
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _unknown(name: str, recommended: str, fix: str, reason: str) -> Check:
    return Check(name, UNKNOWN, recommended, False, fix, reason)


def governor(sys_root: Path = SYS) -> Check:
    """CPU frequency governor of every CPU (``performance`` recommended)."""
    rec, fix = "performance", "cpupower frequency-set -g performance  # and disable deep C-states: idle=poll or intel_idle.max_cstate=1"
    found: dict[str, list[int]] = {}
    for f in sorted((sys_root / "devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor")):
        g = _read(f)
        if g:
            found.setdefault(g, []).append(int(f.parent.parent.name[3:]))
    if not found:
        return _unknown("cpu_governor", rec, fix, "no cpufreq in sysfs: a VM or container (the host sets the "
                        "frequency policy) or a kernel without cpufreq")
    value = ", ".join(f"{g} (CPUs {_ranges(c)})" for g, c in found.items())
    return Check("cpu_governor", value, rec, set(found) == {"performance"}, fix)


def _ranges(cpus: list[int]) -> str:
    cpus = sorted(set(cpus))
    out, i = [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out) or "none"


def _cmdline_param(cmdline: str, key: str) -> str | None:
    for tok in cmdline.split():
        if tok.startswith(key + "="):
            return tok.split("=", 1)[1]
    return None


def isolated_cpus(sys_root: Path = SYS, proc_root: Path = PROC) -> list[int] | None:
    """CPUs taken out of the scheduler (``/sys/devices/system/cpu/isolated``, else ``isolcpus=`` in
    /proc/cmdline); None when neither can be read."""
    text = _read(sys_root / "devices/system/cpu/isolated")
    if text is not None:
        return cpu.parse_cpu_list(text)
    cmd = _read(proc_root / "cmdline")
    if cmd is None:
        return None
    iso = _cmdline_param(cmd, "isolcpus")
    return cpu.parse_cpu_list(",".join(p for p in (iso or "").split(",") if p[:1].isdigit()))


def isolation(sys_root: Path = SYS, proc_root: Path = PROC) -> Check:
    """Cores kept for the hot processes: ``isolcpus`` and ``nohz_full`` on the kernel command line."""
    rec = "isolcpus=<hot cores> nohz_full=<hot cores> rcu_nocbs=<hot cores> (one core per pipeline process)"
    fix = ('add "isolcpus=2-7 nohz_full=2-7 rcu_nocbs=2-7" to GRUB_CMDLINE_LINUX in /etc/default/grub, '
           "then update-grub (grub2-mkconfig) and reboot")
    cmd = _read(proc_root / "cmdline")
    iso = isolated_cpus(sys_root, proc_root)
    if cmd is None and iso is None:
        return _unknown("isolated_cores", rec, fix, "neither /proc/cmdline nor /sys/devices/system/cpu/isolated "
                        "can be read")
    nohz = _cmdline_param(cmd or "", "nohz_full")
    value = f"isolated: {_ranges(iso or [])}; nohz_full: {nohz or 'none'}"
    return Check("isolated_cores", value, rec, bool(iso) and bool(nohz), fix)


def irq_affinity(sys_root: Path = SYS, proc_root: Path = PROC) -> Check:
    """NIC interrupts on housekeeping cores, away from the isolated hot cores."""
    rec = "NIC queue IRQs on housekeeping cores of the NIC's NUMA node, none on an isolated core; irqbalance off"
    fix = "systemctl stop irqbalance; echo <housekeeping cpus> > /proc/irq/<irq>/smp_affinity_list  (per NIC IRQ)"
    if _read(proc_root / "interrupts") is None:
        return _unknown("irq_affinity", rec, fix, "/proc/interrupts cannot be read")
    rows = cpu.irq_report(proc_root, sys_root)
    if not rows:
        return _unknown("irq_affinity", rec, fix, "no network interface interrupts found in /proc/interrupts "
                        "(a NIC without its own IRQs here, e.g. a container's veth)")
    iso = set(isolated_cpus(sys_root, proc_root) or [])
    balancer = irqbalance_running(proc_root)
    parts, bad = [], balancer
    for r in rows:
        aff = cpu.parse_cpu_list(r["affinity"]) if r["affinity"] else r["cpus"]
        bad |= bool(iso & set(aff)) or bool(iso & set(r["cpus"]))
        parts.append(f"{r['iface'] or r['name'].split()[-1]} irq {r['irq']}: affinity {_ranges(aff)}, "
                     f"taken on {_ranges(r['cpus'])}")
    if balancer:
        parts.append("irqbalance is running (it moves them)")
    if not iso:
        return Check("irq_affinity", "; ".join(parts), rec, False, fix,
                     "no isolated cores: every core takes interrupts and runs other work")
    return Check("irq_affinity", "; ".join(parts), rec, not bad, fix)


def irqbalance_running(proc_root: Path = PROC) -> bool:
    """Whether an ``irqbalance`` process is running (it rewrites IRQ affinities every few seconds)."""
    return any(_read(comm) == "irqbalance" for comm in proc_root.glob("[0-9]*/comm"))


CAP_SYS_NICE = 23


def realtime(proc_root: Path = PROC) -> list[Check]:
    """Whether this process may use SCHED_FIFO (``CAP_SYS_NICE`` or an ``rtprio`` limit), and the kernel's
    real-time throttling (``kernel.sched_rt_runtime_us``: -1 lets a FIFO process keep its isolated core)."""
    out = []
    rec = "permitted (CAP_SYS_NICE or an rtprio limit)"
    fix = ("setcap cap_sys_nice+ep $(readlink -f .venv/bin/python), or '<user> - rtprio 99' in "
           "/etc/security/limits.conf, or --cap-add SYS_NICE for a container")
    status = _read(proc_root / "self/status")
    cap = next((ln.split()[1] for ln in (status or "").splitlines() if ln.startswith("CapEff:")), None)
    limits = _read(proc_root / "self/limits") or ""
    rtprio = next((ln.split()[3] for ln in limits.splitlines() if ln.startswith("Max realtime priority")), "0")
    if cap is None:
        out.append(_unknown("realtime_priority", rec, fix, "/proc/self/status has no CapEff line"))
    else:
        has_cap = bool(int(cap, 16) >> CAP_SYS_NICE & 1)
        limit = int(rtprio) if rtprio.isdigit() else 0
        value = ("permitted: CAP_SYS_NICE" if has_cap else
                 f"permitted: rtprio limit {limit}" if limit > 0 else "not permitted (no CAP_SYS_NICE, rtprio 0)")
        out.append(Check("realtime_priority", value, rec, has_cap or limit > 0, fix))
    rec = "-1 (no throttling of real-time processes; only with isolated cores)"
    fix = f"sysctl -w kernel.sched_rt_runtime_us=-1  # persist in {SYSCTL_FILE}"
    text = _read(proc_root / "sys/kernel/sched_rt_runtime_us")
    if text is None:
        out.append(_unknown("kernel.sched_rt_runtime_us", rec, fix, "/proc/sys/kernel/sched_rt_runtime_us "
                            "cannot be read"))
    else:
        out.append(Check("kernel.sched_rt_runtime_us", text, rec, text == "-1", fix,
                         "" if text == "-1" else "a FIFO process is paused for 50 ms of every second"
                         if text == "950000" else ""))
    return out


def sysctls(proc_root: Path = PROC) -> list[Check]:
    """Socket buffer sizes, backlog and busy-poll sysctls against their recommended minimums."""
    out = []
    for key, (minimum, why) in SYSCTL_MIN.items():
        rec = f">= {minimum} ({why})"
        fix = f"sysctl -w {key}={minimum}  # persist: echo '{key} = {minimum}' >> {SYSCTL_FILE}"
        text = _read(proc_root / "sys" / key.replace(".", "/"))
        try:
            val = int(text) if text is not None else None
        except ValueError:
            val = None
        if val is None:
            out.append(_unknown(key, rec, fix, f"/proc/sys/{key.replace('.', '/')} cannot be read "
                                "(a network namespace or container that hides it)"))
        else:
            out.append(Check(key, str(val), rec, val >= minimum, fix))
    return out


def huge_pages(sys_root: Path = SYS, proc_root: Path = PROC) -> list[Check]:
    """Reserved huge pages (what a kernel-bypass stack maps its buffers from) and transparent huge pages."""
    out = []
    rec, fix = ">= 1024 x 2 MiB pages reserved", (f"sysctl -w vm.nr_hugepages=1024  # persist in {SYSCTL_FILE}; "
                                                 "or hugepages=1024 on the kernel command line")
    meminfo = _read(proc_root / "meminfo")
    total = None
    for line in (meminfo or "").splitlines():
        if line.startswith("HugePages_Total:"):
            total = int(line.split()[1])
    if total is None:
        out.append(_unknown("huge_pages", rec, fix, "/proc/meminfo has no HugePages_Total (unreadable or a "
                            "kernel without hugetlbfs)"))
    else:
        out.append(Check("huge_pages", f"{total} reserved", rec, total >= 1024, fix))
    rec, fix = "always or madvise", "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"
    thp = _read(sys_root / "kernel/mm/transparent_hugepage/enabled")
    if thp is None:
        out.append(_unknown("transparent_huge_pages", rec, fix, "/sys/kernel/mm/transparent_hugepage is missing"))
    else:
        mode = next((t[1:-1] for t in thp.split() if t.startswith("[")), thp)
        out.append(Check("transparent_huge_pages", mode, rec, mode in ("always", "madvise"), fix))
    return out


def numa(sys_root: Path = SYS) -> Check:
    """NUMA layout: nodes with their CPUs, and the node of each NIC (the feed process belongs there)."""
    rec = "feed, book and gateway processes, their rings and the NIC on one NUMA node (and each GPU worker on its GPU's)"
    fix = "numactl --cpunodebind=<nic node> --membind=<nic node> greekfire hft run  # cores from greekfire.hft.cpu"
    if not (sys_root / "devices/system/node").is_dir():
        return _unknown("numa_layout", rec, fix, "/sys/devices/system/node is missing (a kernel without NUMA "
                        "or a container that hides sysfs)")
    nodes = cpu.numa_nodes(sys_root)
    parts = [f"node {n}: CPUs {_ranges(c)}" for n, c in nodes.items()]
    nic_nodes = {}
    for iface in sorted((sys_root / "class/net").glob("*")):
        node = _read(iface / "device" / "numa_node")
        if node is not None:
            nic_nodes[iface.name] = node
    if nic_nodes:
        parts.append("NICs: " + ", ".join(f"{i} on node {n}" for i, n in nic_nodes.items()))
    return Check("numa_layout", "; ".join(parts), rec, True, fix,
                 "one node: nothing to place" if len(nodes) == 1 else "")


def clocksource(sys_root: Path = SYS) -> Check:
    """The kernel clock source (``tsc``: reading the clock costs about 20 ns, others up to microseconds)."""
    rec = "tsc"
    fix = ("echo tsc > /sys/devices/system/clocksource/clocksource0/current_clocksource  # persist: "
           "clocksource=tsc tsc=reliable on the kernel command line")
    base = sys_root / "devices/system/clocksource/clocksource0"
    cur = _read(base / "current_clocksource")
    if cur is None:
        return _unknown("clock_source", rec, fix, f"{base}/current_clocksource cannot be read")
    avail = _read(base / "available_clocksource") or ""
    return Check("clock_source", cur, rec, cur == "tsc", fix,
                 "" if cur == "tsc" or "tsc" in avail.split() else "tsc is not offered by this machine")


def checks(sys_root: Path = SYS, proc_root: Path = PROC) -> list[Check]:
    """Every check, in a fixed order; reads only."""
    return [governor(sys_root), isolation(sys_root, proc_root), irq_affinity(sys_root, proc_root),
            *realtime(proc_root), *sysctls(proc_root), *huge_pages(sys_root, proc_root), numa(sys_root),
            clocksource(sys_root)]
