from __future__ import annotations

import pytest
import torch.distributed as dist

from conftest import free_port
from greekfire.core.errors import ConfigError
from greekfire.gpu.distributed import init_distributed


@pytest.fixture
def no_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_plain_run_is_single_process(no_torchrun_env: pytest.MonkeyPatch) -> None:
    info = init_distributed()
    assert (info.rank, info.world_size, info.initialized, info.backend, info.device) == (0, 1, False, "gloo", "cpu")


def test_torchrun_env_starts_gloo_group(no_torchrun_env: pytest.MonkeyPatch) -> None:
    mp = no_torchrun_env
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}.items():
        mp.setenv(k, v)
    info = init_distributed(timeout_s=30)
    try:
        assert info.initialized and info.backend == "gloo" and dist.get_backend() == "gloo"
        assert dist.get_world_size() == 1 and dist.get_rank() == 0
    finally:
        dist.destroy_process_group()


def test_bad_env_names_the_variable(no_torchrun_env: pytest.MonkeyPatch) -> None:
    no_torchrun_env.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        init_distributed()
    no_torchrun_env.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match="nccl"):
        init_distributed("nccl")
