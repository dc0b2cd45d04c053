"""Demo stage of the data pipeline: synthetic market -> partitions -> samples -> streamed back."""

from __future__ import annotations

import time
from typing import Any

from greekfire.core.settings import Settings
from greekfire.data.dataset import StreamingOptionsDataset, write_samples
from greekfire.data.features import Normalizer, build_samples, time_split
from greekfire.data.synthetic import generate_market, read_partitions, write_partitions


def run_demo(settings: Settings) -> dict[str, Any]:
    """Generate a few days of a synthetic market, write it as Parquet partitions under
    ``settings.home/data/demo``, read it back, build samples, split by time and stream them."""
    t0 = time.perf_counter()
    root = str((settings.home / "data" / "demo").resolve())
    quotes, bars = generate_market(seed=7, days=8, history_days=90)
    paths = write_partitions(quotes, bars, f"{root}/market", settings)
    q, b = read_partitions(f"{root}/market", settings)
    samples = build_samples(q, b, window=20, rate=quotes.attrs["rate"], div_yield=quotes.attrs["div_yield"])
    train, val, test = time_split(samples, val_frac=0.25, test_frac=0.25)
    norm = Normalizer.fit(train)
    write_samples(norm.transform(train), f"{root}/samples/train", settings, row_group_size=256)
    streamed = sum(1 for _ in StreamingOptionsDataset(f"{root}/samples/train", settings))
    dropped = {k: v for k, v in samples.dropped.items() if v}
    return {
        "market": f"{q['quote_date'].nunique()} quote days, {len(q)} quotes, {len(b)} bars, "
        f"{sum(len(v) for v in paths.values())} files",
        "dropped rows": ", ".join(f"{k}={v}" for k, v in dropped.items()) or "none",
        "samples": f"{len(samples)} (train {len(train)}, val {len(val)}, test {len(test)})",
        "features": f"seq {samples.window}x{len(samples.seq_names)}, contract {len(samples.contract_names)}",
        "streamed back": streamed,
        "mean |target - BS baseline|": round(float(abs(samples.target - samples.bs_baseline).mean()), 5),
        "where": root,
        "seconds": round(time.perf_counter() - t0, 2),
    }
