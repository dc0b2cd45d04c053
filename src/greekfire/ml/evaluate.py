"""Out-of-sample scores: MSE, RMSE, MAE, R^2, MAPE above a price floor, and the Black-Scholes baseline."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from greekfire.gpu import run_with_oom_backoff
from greekfire.ml.data import Batch


class _Rows:
    """Row-sliceable view of a batch dict (so OOM backoff can cut it)."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["contract"])

    def __getitem__(self, s: slice) -> Batch:
        return {k: v[s] for k, v in self.batch.items()}


@torch.no_grad()
def predict(model: nn.Module, batch: Batch, batch_size: int = 65536) -> Tensor:
    """Model output (price / strike) for every row of ``batch``, in eval mode, on the model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    def run(part: Batch) -> Tensor:
        seq = part.get("seq")
        return model(part["contract"].to(device), None if seq is None else seq.to(device)).float().cpu()

    try:
        # the GPU manager halves the slice and retries when the device runs out of memory
        out = run_with_oom_backoff(run, _Rows(batch), batch_size, device=str(device))
    finally:
        model.train(was_training)
    return out if isinstance(out, Tensor) else torch.as_tensor(out)


def regression_scores(pred: Tensor, target: Tensor, *, floor: float = 0.0, prefix: str = "") -> dict[str, float]:
    """MSE, RMSE, MAE, R^2 and MAPE (%, over targets above ``floor``) of ``pred`` against ``target``."""
    p, y = pred.double().flatten(), target.double().flatten()
    if len(y) == 0:
        return {}
    err = p - y
    mse = float((err**2).mean())
    var = float(((y - y.mean()) ** 2).mean())
    keep = y > max(floor, 1e-12)
    mape = float((err[keep].abs() / y[keep]).mean() * 100) if bool(keep.any()) else math.nan
    return {
        f"{prefix}mse": mse,
        f"{prefix}rmse": math.sqrt(mse),
        f"{prefix}mae": float(err.abs().mean()),
        f"{prefix}r2": 1.0 - mse / var if var > 0 else math.nan,
        f"{prefix}mape_pct": mape,
        f"{prefix}n": int(len(y)),
        f"{prefix}n_above_floor": int(keep.sum()),
    }


def evaluate(model: nn.Module, batch: Batch, *, floor: float = 0.0, prefix: str = "test_") -> dict[str, float]:
    """Scores of ``model`` on ``batch``; with a ``baseline`` column also the baseline's scores and the gain."""
    if len(batch.get("target", ())) == 0:
        return {}
    pred = predict(model, batch)
    scores = regression_scores(pred, batch["target"], floor=floor, prefix=prefix)
    if "baseline" in batch:
        base = batch["baseline"]
        ok = torch.isfinite(base)
        b = regression_scores(base[ok], batch["target"][ok], floor=floor, prefix=f"{prefix}bs_")
        scores.update(b)
        if b.get(f"{prefix}bs_rmse"):
            # compare on the same rows: the baseline is undefined where the historical vol is
            ours = regression_scores(pred[ok], batch["target"][ok])["rmse"]
            scores[f"{prefix}rmse_gain_vs_bs_pct"] = 100.0 * (1.0 - ours / b[f"{prefix}bs_rmse"])
    return scores
