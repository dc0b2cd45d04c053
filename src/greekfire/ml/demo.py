"""Demo stage of the pricing model: a short real training run, then micro-batched inference on it."""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from greekfire.core.settings import Settings
from greekfire.ml.config import compose_experiment
from greekfire.ml.serving import MicroBatcher, load_pricing_model
from greekfire.ml.train import train_pricing


def run_demo(settings: Settings) -> dict[str, Any]:
    """Train the ``smoke`` experiment briefly (Lightning, TensorBoard, MLflow, checkpoints), then price
    64 concurrent one-row requests through the micro-batcher; returns a summary."""
    cfg = compose_experiment(
        "smoke", ["data.n_samples=8000", "trainer.max_epochs=8", "name=demo_smoke"], settings=settings
    )
    result = train_pricing(cfg, settings)
    assert result.best_checkpoint is not None
    model = load_pricing_model(result.best_checkpoint, device="cpu")
    rows = torch.tensor([[0.8 + 0.4 * i / 63, 0.5, 0.03, 0.25] for i in range(64)])

    async def price_all() -> tuple[torch.Tensor, int]:
        batcher = MicroBatcher(model, max_rows=1024, max_wait_ms=5.0)
        outs = await asyncio.gather(*(batcher.submit(rows[i : i + 1]) for i in range(len(rows))))
        await batcher.close()
        return torch.cat(outs), batcher.batches

    priced, batches = asyncio.run(price_all())
    direct = model(rows)
    return {
        "run": f"{result.name}/{result.version}",
        "steps": result.global_step,
        "test RMSE (V/K)": round(result.scores.get("test_rmse", float("nan")), 5),
        "test R^2": round(result.scores.get("test_r2", float("nan")), 5),
        "best checkpoint": result.best_checkpoint.name,
        "mlflow run": result.mlflow_run_id,
        "64 requests -> forward passes": batches,
        "batched == direct": bool(torch.allclose(priced, direct, atol=1e-6)),
    }
