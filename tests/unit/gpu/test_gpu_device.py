"""The one place that decides cpu or cuda, and the packages that ask it (runs on any machine)."""

from __future__ import annotations

import pytest
import torch
from gpu_fake_nvml import FakeNvml, gpus

from greekfire.core.errors import ConfigError
from greekfire.core.settings import GpuSettings
from greekfire.gpu.cloud import CloudInfo
from greekfire.gpu.device import choose_device, cuda_usable, placed_device
from greekfire.gpu.manager import GpuManager
from greekfire.market.quotes import QuoteBook, default_device

need_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")


def test_explicit_cpu_and_bad_names() -> None:
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device(torch.device("cpu")) == torch.device("cpu")
    assert choose_device(" CPU ") == torch.device("cpu")
    for bad in ("gpu0", "tpu", "cuda:x"):
        with pytest.raises(ConfigError) as ei:
            choose_device(bad)
        assert ei.value.field == "device"


@need_no_cuda
def test_without_cuda_auto_is_the_cpu_and_cuda_is_refused_by_name() -> None:
    assert not cuda_usable()
    assert choose_device("auto") == choose_device(None) == torch.device("cpu")
    assert choose_device("auto", min_free_mb=10**9) == torch.device("cpu")
    with pytest.raises(ConfigError, match="cpu or auto"):
        choose_device("cuda")
    with pytest.raises(ConfigError, match="cpu or auto"):
        choose_device("cuda:1")
    # the packages that used to ask torch themselves now follow the same answer
    assert default_device() == torch.device("cpu") and QuoteBook(2, 2).device.type == "cpu"


def test_auto_under_a_gpu_manager_follows_health_and_headroom() -> None:
    nvml = FakeNvml(gpus(2))
    nvml.devices[0].used_mb = 70_000  # GPU 0 nearly full, GPU 1 nearly empty
    mgr = GpuManager(GpuSettings(min_free_mb=512), nvml=nvml, cloud=CloudInfo())
    assert placed_device(mgr) == torch.device("cuda:1")
    assert placed_device(mgr, need_mb=80_000) == torch.device("cpu")  # no GPU keeps the headroom
    mgr.tracker.record_xid(nvml.devices[1].uuid, 79)  # fallen off the bus
    assert placed_device(mgr) == torch.device("cuda:0")
    mgr.tracker.record_double_bit_ecc(nvml.devices[0].uuid)
    assert placed_device(mgr) == torch.device("cpu")
    if not torch.cuda.is_available():  # torch here cannot run on a GPU, whatever the manager sees
        assert choose_device("auto", manager=mgr) == torch.device("cpu")
