"""The machine doctor: on this machine every check has a value or ``unknown`` with a reason; on an empty
tree every check is ``unknown`` with a reason (no exception); on a tuned tree the checks pass."""

from __future__ import annotations

from pathlib import Path

from greekfire.hft import doctor

NAMES = ["cpu_governor", "isolated_cores", "irq_affinity", "realtime_priority", "kernel.sched_rt_runtime_us",
         "net.core.rmem_max", "net.core.wmem_max",
         "net.core.rmem_default", "net.core.netdev_max_backlog", "net.core.busy_poll", "net.core.busy_read",
         "huge_pages", "transparent_huge_pages", "numa_layout", "clock_source"]


def _well_formed(checks: list[doctor.Check]) -> None:
    assert [c.name for c in checks] == NAMES
    for c in checks:
        assert c.value, c.name
        assert c.recommended and c.fix, c.name
        if c.value == doctor.UNKNOWN:
            assert c.reason and not c.ok, c.name
        assert set(c.as_dict()) == {"name", "value", "recommended", "ok", "fix", "reason"}


def test_this_machine() -> None:
    _well_formed(doctor.checks())


def test_an_empty_machine_is_unknown_with_reasons(tmp_path: Path) -> None:
    checks = doctor.checks(tmp_path / "sys", tmp_path / "proc")
    _well_formed(checks)
    assert all(c.value == doctor.UNKNOWN for c in checks)


def _tuned(root: Path) -> tuple[Path, Path]:
    sysfs, proc = root / "sys", root / "proc"

    def put(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")

    for c in range(4):
        put(sysfs / f"devices/system/cpu/cpu{c}/cpufreq/scaling_governor", "performance")
    put(sysfs / "devices/system/cpu/isolated", "2-3")
    put(sysfs / "devices/system/node/node0/cpulist", "0-3")
    put(sysfs / "devices/system/clocksource/clocksource0/current_clocksource", "tsc")
    put(sysfs / "devices/system/clocksource/clocksource0/available_clocksource", "tsc hpet")
    put(sysfs / "kernel/mm/transparent_hugepage/enabled", "always [madvise] never")
    put(sysfs / "class/net/ens1/device/numa_node", "0")
    put(proc / "cmdline", "BOOT_IMAGE=/vmlinuz isolcpus=2-3 nohz_full=2-3 rcu_nocbs=2-3")
    put(proc / "interrupts", "      CPU0 CPU1 CPU2 CPU3\n 90: 100 5 0 0 IR-PCI-MSI 1-edge ens1-TxRx-0")
    put(proc / "irq/90/smp_affinity_list", "0-1")
    put(proc / "meminfo", "MemTotal: 1000 kB\nHugePages_Total:    2048\n")
    put(proc / "self/status", "Name: python\nCapEff:\t0000000000800000")  # CAP_SYS_NICE only
    put(proc / "sys/kernel/sched_rt_runtime_us", "-1")
    put(proc / "42/comm", "sshd")
    for key, (minimum, _) in doctor.SYSCTL_MIN.items():
        put(proc / "sys" / key.replace(".", "/"), str(minimum * 2))
    return sysfs, proc


def test_a_tuned_machine_passes(tmp_path: Path) -> None:
    sysfs, proc = _tuned(tmp_path)
    checks = doctor.checks(sysfs, proc)
    _well_formed(checks)
    failing = [(c.name, c.value, c.reason) for c in checks if not c.ok]
    assert failing == []
    by = {c.name: c for c in checks}
    assert "ens1 irq 90: affinity 0-1" in by["irq_affinity"].value
    assert by["isolated_cores"].value == "isolated: 2-3; nohz_full: 2-3"


def test_what_fails_and_the_fix_names_the_setting(tmp_path: Path) -> None:
    sysfs, proc = _tuned(tmp_path)
    (proc / "sys/net/core/busy_poll").write_text("0\n")
    (proc / "irq/90/smp_affinity_list").write_text("0-3\n")  # reaches the isolated cores
    (sysfs / "devices/system/cpu/cpu1/cpufreq/scaling_governor").write_text("powersave\n")
    (proc / "self/status").write_text("CapEff:\t0000000000000000\n")
    (proc / "self/limits").write_text("Limit  Soft Limit  Hard Limit  Units\nMax realtime priority  0  0\n")
    (proc / "sys/kernel/sched_rt_runtime_us").write_text("950000\n")
    by = {c.name: c for c in doctor.checks(sysfs, proc)}
    assert not by["realtime_priority"].ok and "not permitted" in by["realtime_priority"].value
    assert not by["kernel.sched_rt_runtime_us"].ok and "50 ms" in by["kernel.sched_rt_runtime_us"].reason
    (proc / "99").mkdir()
    (proc / "99/comm").write_text("irqbalance\n")
    (proc / "irq/90/smp_affinity_list").write_text("0-1\n")
    assert "irqbalance is running" in {c.name: c for c in doctor.checks(sysfs, proc)}["irq_affinity"].value
    assert not by["net.core.busy_poll"].ok and "sysctl -w net.core.busy_poll=50" in by["net.core.busy_poll"].fix
    assert not by["irq_affinity"].ok and "smp_affinity_list" in by["irq_affinity"].fix
    assert not by["cpu_governor"].ok and "powersave (CPUs 1)" in by["cpu_governor"].value
