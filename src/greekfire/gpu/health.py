"""Device health: XID and ECC events from NVML, and the healthy/unhealthy state placement obeys.

A critical XID marks its device unhealthy, except the XIDs an application causes itself (13 graphics
engine exception, 31 memory page fault, 43 channel stopped, 45 preemptive cleanup, 68 video processor
exception, 109 context switch timeout): those say a program misbehaved, not that the GPU is broken.
A double-bit (uncorrectable) ECC error always marks the device unhealthy.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from greekfire.core.metrics import counter, gauge
from greekfire.gpu.nvml import NvmlSession, error_reason, is_nvml_error, text

log = logging.getLogger(__name__)

APPLICATION_XIDS: frozenset[int] = frozenset({13, 31, 43, 45, 68, 109})

_xid_total = counter("greekfire_gpu_xid_events", "XID events seen, by device and XID", ["gpu", "UUID", "xid"])
_ecc_dbe_total = counter("greekfire_gpu_ecc_dbe_events", "double-bit ECC events seen", ["gpu", "UUID"])
_healthy_gauge = gauge("greekfire_gpu_healthy", "1 if the device may be placed on, 0 if unhealthy", ["gpu", "UUID"])


@dataclass(slots=True)
class DeviceHealth:
    """Health of one device: ``reasons`` lists what made it unhealthy; ``last_xid`` the last XID seen."""

    uuid: str
    healthy: bool = True
    last_xid: int = 0
    xid_count: int = 0
    dbe_count: int = 0
    reasons: list[str] = field(default_factory=list)


class HealthTracker:
    """Thread-safe health per device UUID; devices never seen are healthy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, DeviceHealth] = {}
        self._index: dict[str, str] = {}  # uuid -> NVML index as text, for metric labels

    def _get(self, uuid: str) -> DeviceHealth:
        st = self._state.get(uuid)
        if st is None:
            st = self._state[uuid] = DeviceHealth(uuid)
        return st

    def register(self, uuid: str, index: int | str) -> None:
        """Know a device (so it shows in :meth:`snapshot` and the healthy gauge) before any event."""
        with self._lock:
            self._index[uuid] = str(index)
            st = self._get(uuid)
        _healthy_gauge.labels(gpu=str(index), UUID=uuid).set(1.0 if st.healthy else 0.0)

    def _mark(self, st: DeviceHealth, reason: str) -> None:
        if st.healthy:
            log.error("GPU %s marked unhealthy: %s", st.uuid, reason, extra={"gpu_uuid": st.uuid})
        st.healthy = False
        if reason not in st.reasons:
            st.reasons.append(reason)
        _healthy_gauge.labels(gpu=self._index.get(st.uuid, ""), UUID=st.uuid).set(0.0)

    def record_xid(self, uuid: str, xid: int) -> bool:
        """Record an XID on a device; returns True if it made (or kept) the device unhealthy."""
        with self._lock:
            st = self._get(uuid)
            st.last_xid = int(xid)
            st.xid_count += 1
            _xid_total.labels(gpu=self._index.get(uuid, ""), UUID=uuid, xid=str(int(xid))).inc()
            if int(xid) in APPLICATION_XIDS:
                log.warning("GPU %s: application XID %d (device stays healthy)", uuid, xid)
                return not st.healthy
            self._mark(st, f"critical XID {int(xid)}")
            return True

    def record_double_bit_ecc(self, uuid: str, count: int = 1) -> None:
        """Record uncorrectable (double-bit) ECC errors: the device becomes unhealthy."""
        with self._lock:
            st = self._get(uuid)
            st.dbe_count += int(count)
            _ecc_dbe_total.labels(gpu=self._index.get(uuid, ""), UUID=uuid).inc(count)
            self._mark(st, f"double-bit ECC errors ({st.dbe_count})")

    def mark_healthy(self, uuid: str) -> None:
        """Operator override after a reset or a node drain: clear a device's unhealthy state."""
        with self._lock:
            self._state[uuid] = DeviceHealth(uuid)
        _healthy_gauge.labels(gpu=self._index.get(uuid, ""), UUID=uuid).set(1.0)

    def is_healthy(self, uuid: str) -> bool:
        """False once a critical XID or a double-bit ECC error was recorded for ``uuid``."""
        with self._lock:
            st = self._state.get(uuid)
            return True if st is None else st.healthy

    def get(self, uuid: str) -> DeviceHealth:
        """A copy of one device's health."""
        with self._lock:
            st = self._get(uuid)
            return DeviceHealth(st.uuid, st.healthy, st.last_xid, st.xid_count, st.dbe_count, list(st.reasons))

    def snapshot(self) -> dict[str, DeviceHealth]:
        """Copies of every known device's health, by UUID."""
        with self._lock:
            uuids = list(self._state)
        return {u: self.get(u) for u in uuids}


class XidWatcher:
    """Waits on an NVML event set for XID and ECC events and feeds a :class:`HealthTracker`.

    ``start()`` runs :meth:`poll_once` in a daemon thread until ``stop()``; tests may call
    :meth:`poll_once` directly. Devices that do not support events are skipped with a reason.
    """

    def __init__(self, tracker: HealthTracker, nvml: Any | None = None, wait_ms: int = 500) -> None:
        self.tracker = tracker
        self.wait_ms = int(wait_ms)
        self.reasons: list[str] = []
        self._session = NvmlSession(nvml)
        self._nvml = self._session.nvml
        self._event_set: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> bool:
        """Initialise NVML and register every device for XID/ECC events; False (with reasons) if impossible."""
        if self._event_set is not None:
            return True
        self._session.__enter__()
        if not self._session.ok:
            self.reasons.append(self._session.reason)
            return False
        nv = self._nvml
        wanted = nv.nvmlEventTypeXidCriticalError | nv.nvmlEventTypeDoubleBitEccError | nv.nvmlEventTypeSingleBitEccError
        try:
            self._event_set = nv.nvmlEventSetCreate()
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                uuid = text(nv.nvmlDeviceGetUUID(h))
                self.tracker.register(uuid, i)
                try:
                    mask = wanted & int(nv.nvmlDeviceGetSupportedEventTypes(h))
                    if not mask:
                        self.reasons.append(f"GPU {i}: no XID/ECC events supported")
                        continue
                    nv.nvmlDeviceRegisterEvents(h, mask, self._event_set)
                except Exception as exc:
                    if not is_nvml_error(exc, nv):
                        raise
                    self.reasons.append(f"GPU {i}: events not supported ({error_reason(exc)})")
        except Exception as exc:
            if not is_nvml_error(exc, nv):
                raise
            self.reasons.append(f"NVML event set failed ({error_reason(exc)})")
            self.close()
            return False
        return True

    def poll_once(self, timeout_ms: int | None = None) -> int:
        """Wait up to ``timeout_ms`` for one event and record it; returns 1 if one was handled, else 0."""
        if self._event_set is None and not self.open():
            return 0
        nv = self._nvml
        # _v2 returns the XID in eventData; newer bindings may drop it, so fall back to the plain name
        wait = getattr(nv, "nvmlEventSetWait_v2", None) or nv.nvmlEventSetWait
        try:
            data = wait(self._event_set, int(self.wait_ms if timeout_ms is None else timeout_ms))
        except Exception as exc:
            if is_nvml_error(exc, nv) and getattr(exc, "value", None) == nv.NVML_ERROR_TIMEOUT:
                return 0
            if is_nvml_error(exc, nv):
                log.warning("NVML event wait failed: %s", error_reason(exc))
                return 0
            raise
        uuid = text(nv.nvmlDeviceGetUUID(data.device))
        etype = int(data.eventType)
        if etype & nv.nvmlEventTypeXidCriticalError:
            self.tracker.record_xid(uuid, int(data.eventData))
        elif etype & nv.nvmlEventTypeDoubleBitEccError:
            self.tracker.record_double_bit_ecc(uuid)
        elif etype & nv.nvmlEventTypeSingleBitEccError:
            log.info("GPU %s: corrected (single-bit) ECC error", uuid)
        return 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the watcher must outlive a bad event
                log.exception("XID watcher iteration failed")
                self._stop.wait(1.0)

    def start(self) -> bool:
        """Open the event set and start the watcher thread; False (with reasons) when NVML is unavailable."""
        if not self.open():
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="greekfire-xid-watcher", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (it wakes within ``wait_ms``) and release the event set."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.close()

    def close(self) -> None:
        """Free the event set and shut NVML down (idempotent)."""
        if self._event_set is not None:
            with contextlib.suppress(Exception):  # freeing during driver teardown may fail; nothing to do
                self._nvml.nvmlEventSetFree(self._event_set)
            self._event_set = None
        if self._session.ok:
            self._session.__exit__()
            self._session.ok = False
