"""The accuracy experiments behind docs/pricing-model.md, rerunnable by anyone.

    python -m greekfire.ml.experiments liu            # Liu et al. (2019) Table 5 anchor, ~10 CPU minutes
    python -m greekfire.ml.experiments culkin         # Culkin & Das (2017) anchor, ~4 minutes
    python -m greekfire.ml.experiments heston spx     # LSTM vs Black-Scholes with 20-day historical vol
    python -m greekfire.ml.experiments all --threads 1 --out benchmarks/results

Each experiment trains its preset from ``configs/train/`` (extra Hydra overrides with ``--set key=value``), writes
``<out>/pricing_<name>.json`` and rewrites ``<out>/pricing_accuracy.md`` with every result found there.
Run them one at a time: they are sized to use the whole of a small machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from greekfire.core.settings import Settings, load_settings
from greekfire.ml.config import compose_experiment
from greekfire.ml.train import train_pricing


@dataclass(frozen=True)
class Experiment:
    """One accuracy anchor: the preset that trains it, the paper's figure and our goal."""

    preset: str
    paper: str
    paper_figure: str
    goal: str
    met: Callable[[dict[str, float]], bool]
    figures: tuple[str, ...]


def _gain(s: dict[str, float]) -> float:
    return s.get("test_rmse_gain_vs_bs_pct", -math.inf)


EXPERIMENTS: dict[str, Experiment] = {
    "liu": Experiment(
        "liu_mlp", "Liu, Oosterlee & Bohte (2019), Table 5 (BS, wide ranges, V/K)",
        "4x400 MLP: test MSE 8.21e-9", "test MSE <= 1e-7 and R^2 >= 0.999998 in ~10 CPU minutes",
        lambda s: s.get("test_mse", 1.0) <= 1e-7 and s.get("test_r2", 0.0) >= 0.999998,
        ("test_mse", "test_rmse", "test_r2", "test_mae"),
    ),
    "culkin": Experiment(
        "culkin_mlp", "Culkin & Das (2017) (BS, 240k/60k, C/K)",
        "out-of-sample RMSE 0.0112", "test RMSE <= 0.003",
        lambda s: s.get("test_rmse", 1.0) <= 0.003,
        ("test_rmse", "test_mse", "test_r2", "test_mae"),
    ),
    "heston": Experiment(
        "heston_lstm", "synthetic Heston market (greekfire.data.synthetic), time split",
        "(no paper figure)", "test RMSE >= 30% below Black-Scholes at 20-day historical vol",
        lambda s: _gain(s) >= 30.0,
        ("test_rmse", "test_bs_rmse", "test_rmse_gain_vs_bs_pct", "test_mape_pct", "test_bs_mape_pct", "test_n"),
    ),
    "spx": Experiment(
        "spx_lstm", "real SPXW 2018 quotes (40 quote dates), split by date",
        "(no paper figure)", "report RMSE and MAPE against Black-Scholes at historical vol",
        lambda s: "test_rmse" in s,
        ("test_rmse", "test_bs_rmse", "test_rmse_gain_vs_bs_pct", "test_mape_pct", "test_bs_mape_pct",
         "test_n", "test_n_above_floor"),
    ),
}


def run_experiment(name: str, settings: Settings, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train experiment ``name`` (a key of :data:`EXPERIMENTS`) and return its result record."""
    exp = EXPERIMENTS[name]
    cfg = compose_experiment(exp.preset, overrides, settings=settings)
    result = train_pricing(cfg, settings)
    scores = result.scores
    return {
        "experiment": name,
        "preset": exp.preset,
        "overrides": list(overrides),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "paper": exp.paper,
        "paper_figure": exp.paper_figure,
        "goal": exp.goal,
        "goal_met": bool(exp.met(scores)),
        "figures": {k: scores.get(k) for k in exp.figures},
        "scores": scores,
        "train_seconds": result.seconds,
        "steps": result.global_step,
        "epochs": result.epochs,
        "torch_threads": settings.training.torch_threads,
        "version": result.version,
        "best_checkpoint": str(result.best_checkpoint),
        "config": cfg.model_dump(mode="json"),
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if 0.999 < v < 1.0:  # R^2 near 1: the digits that matter are the nines
            return f"{v:.7f}"
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return "" if v is None else str(v)


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """The accuracy table (one row per experiment) in Markdown."""
    lines = [
        "| experiment | paper figure | goal | ours | goal met | train time |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        ours = ", ".join(f"{k.removeprefix('test_')}={_fmt(v)}" for k, v in r["figures"].items() if v is not None)
        lines.append(
            f"| {r['experiment']}: {r['paper']} | {r['paper_figure']} | {r['goal']} | {ours} | "
            f"{'yes' if r['goal_met'] else 'no'} | {r['train_seconds']:.0f} s, {r['steps']} steps |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the named experiments in turn and write their JSON and the Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m greekfire.ml.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=[*EXPERIMENTS, "all"])
    parser.add_argument("--out", default="benchmarks/results", help="folder for pricing_*.json and the table")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for small models on a shared CPU)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a Hydra override for every experiment run (repeatable)")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    names = list(EXPERIMENTS) if "all" in args.names else args.names
    settings = load_settings(overrides={"training.torch_threads": args.threads})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        record = run_experiment(name, settings, overrides)
        (out / f"pricing_{name}.json").write_text(json.dumps(record, indent=2, default=str))
        print(json.dumps({"experiment": name, "goal_met": record["goal_met"], **record["figures"]}, default=str))
    records = [json.loads(p.read_text()) for p in sorted(out.glob("pricing_*.json"))]
    (out / "pricing_accuracy.md").write_text(markdown_table(records))
    print(markdown_table(records))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
