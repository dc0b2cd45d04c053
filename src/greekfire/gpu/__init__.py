"""GPU resource manager: discovery, cloud detection, memory policy, OOM recovery, monitoring, health,
topology and placement. Everything runs on a CPU-only machine; nothing here imports torch at import time.

See docs/gpu.md for the API and examples.
"""

from greekfire.gpu.cloud import CloudInfo, detect_cloud, provider_from_dmi
from greekfire.gpu.discovery import DeviceInfo, Inventory, discover
from greekfire.gpu.distributed import DistributedInfo, init_distributed
from greekfire.gpu.health import APPLICATION_XIDS, HealthTracker, XidWatcher
from greekfire.gpu.manager import GpuManager
from greekfire.gpu.memory import GpuOutOfMemoryError, apply_memory_policy, oom_backoff, run_with_oom_backoff
from greekfire.gpu.monitor import FIELDS, GpuMonitor
from greekfire.gpu.placement import PlacementDecision, Placer
from greekfire.gpu.topology import TopologyMatrix, cpu_affinity, pin_process_to, topology_matrix

__all__ = [
    "APPLICATION_XIDS",
    "FIELDS",
    "CloudInfo",
    "DeviceInfo",
    "DistributedInfo",
    "GpuManager",
    "GpuMonitor",
    "GpuOutOfMemoryError",
    "HealthTracker",
    "Inventory",
    "PlacementDecision",
    "Placer",
    "TopologyMatrix",
    "XidWatcher",
    "apply_memory_policy",
    "cpu_affinity",
    "detect_cloud",
    "discover",
    "init_distributed",
    "oom_backoff",
    "pin_process_to",
    "provider_from_dmi",
    "run_with_oom_backoff",
    "topology_matrix",
]
