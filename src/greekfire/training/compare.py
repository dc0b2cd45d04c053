"""Compare tracked runs: a table of their final metrics and differing parameters, and PNG plots of their
learning curves (``train_loss`` and ``val_loss`` against the step), read from the MLflow tracking server.

Example::

    table = compare_runs(["3f2a...", "9c1d..."], settings, out_dir=Path("compare"))
    print(table.metrics["val_loss"])          # {run id: last value}
    print(table.plots)                        # [compare/val_loss.png, compare/train_loss.png]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greekfire.core.errors import ConfigError
from greekfire.core.settings import Settings
from greekfire.ml.tracking import TAG_DATA_VERSION, TAG_GIT_COMMIT, TAG_STATUS, mlflow_uri

#: the learning curves plotted, one PNG each
CURVES = ("train_loss", "val_loss")


@dataclass
class RunComparison:
    """Runs side by side: ``metrics[name][run]`` (last value), ``params`` that differ, ``info`` per run
    (name, status, data version, commit, error), and the plot files written."""

    runs: list[str]
    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    params: dict[str, dict[str, str]] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (plot paths as text)."""
        return {"runs": self.runs, "info": self.info, "metrics": self.metrics, "params": self.params,
                "plots": [str(p) for p in self.plots]}


def compare_runs(run_ids: list[str], settings: Settings, *, out_dir: Path | None = None,
                 tracking_uri: str | None = None) -> RunComparison:
    """Read ``run_ids`` from MLflow and, with ``out_dir``, plot their learning curves there (PNG, one file per
    curve in :data:`CURVES` that any run logged). ConfigError naming a run that does not exist."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri or mlflow_uri(settings))
    cmp = RunComparison(runs=list(run_ids))
    all_params: dict[str, dict[str, str]] = {}
    histories: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for rid in run_ids:
        try:
            run = client.get_run(rid)
        except MlflowException as exc:
            raise ConfigError("RUN", rid, f"no such MLflow run: {exc.message}") from None
        tags = run.data.tags
        cmp.info[rid] = {"name": run.info.run_name, "status": run.info.status, "state": tags.get(TAG_STATUS),
                         "data_version": tags.get(TAG_DATA_VERSION), "git_commit": tags.get(TAG_GIT_COMMIT),
                         "error": tags.get("greekfire.error")}
        for k, v in run.data.metrics.items():
            cmp.metrics.setdefault(k, {})[rid] = float(v)
        all_params[rid] = dict(run.data.params)
        histories[rid] = {c: [(m.step, m.value) for m in client.get_metric_history(rid, c)] for c in CURVES}
    keys = sorted({k for p in all_params.values() for k in p})
    for k in keys:
        values = {rid: all_params[rid].get(k, "") for rid in run_ids}
        if len(set(values.values())) > 1:
            cmp.params[k] = values
    if out_dir is not None:
        cmp.plots = _plot(histories, cmp.info, out_dir)
    return cmp


def _plot(histories: dict[str, dict[str, list[tuple[int, float]]]], info: dict[str, dict[str, Any]],
          out_dir: Path) -> list[Path]:
    import matplotlib  # lazy: only --plots needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for curve in CURVES:
        if not any(h[curve] for h in histories.values()):
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for rid, h in histories.items():
            pts = sorted(h[curve])
            if pts:
                ax.plot([s for s, _ in pts], [v for _, v in pts], marker="." if len(pts) < 50 else None,
                        label=f"{info[rid]['name'] or rid[:8]} ({rid[:8]})")
        ax.set_xlabel("step")
        ax.set_ylabel(curve)
        ax.set_yscale("log")
        ax.set_title(f"{curve} by step")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
        path = out_dir / f"{curve}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
