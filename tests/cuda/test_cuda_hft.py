"""The HFT rings' device stager on a real GPU: a consumed batch reaches the device from pinned memory,
byte for byte, and reusing the pinned buffer never changes a batch already sent."""

from __future__ import annotations

import numpy as np
import torch

from greekfire.hft.ring import DeviceStager, Ring
from greekfire.market.book import EVENT_DTYPE


def test_stager_moves_batches_from_pinned_memory(dev: torch.device) -> None:
    stager = DeviceStager(EVENT_DTYPE, max_n=4096, device=str(dev))
    assert stager.device.type == dev.type
    if dev.type == "cuda":
        assert stager._host.is_pinned()
    with Ring.create(EVENT_DTYPE, 1 << 13) as ring:
        sent = []
        for k in range(3):  # three batches through the one pinned buffer, each checked after the last
            ev = np.zeros(4096, EVENT_DTYPE)
            ev["price"] = np.arange(4096) + 10_000 * k
            ring.publish_batch(ev)
            sent.append(stager.stage(ring.consume(4096)).clone())
            ring.release(4096)
        for k, t in enumerate(sent):
            assert t.device.type == dev.type
            words = t.view(torch.int64).cpu()
            assert torch.equal(words[:, 3], torch.arange(4096) + 10_000 * k)
