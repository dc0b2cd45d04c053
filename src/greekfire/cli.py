"""The ``greekfire`` command. Thin: parse, call one library function, print.

Each system adds its sub-command group here; the work is done in the library so tests and servers
build the same objects the command line does.

Each sub-command imports the library it calls inside its own function, not at the top of this module: a
command loads only what it uses (torch, Lightning, numba kernels, uvicorn cost seconds to import), so
``greekfire --help`` and ``greekfire config show`` answer at once. (Elsewhere in the package an import
inside a function is kept only for the same reason, and its comment says what it saves.)

It is one module: the main command tree and the commands of the parts that have no sub-app module of their
own (price, data, train, serve, gpu, trade); the larger sub-apps live in ``cli_*.py``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand

from greekfire import __version__
from greekfire.cli_api import api_key_app, serve_trading_cmd, serve_wheel_cmd
from greekfire.cli_errors import (
    EXIT_DATA,
    EXIT_USAGE,
    LOG_LEVELS,
    ErrorReportingGroup,
    UsageProblem,
    fail,
    require_file,
    say_error,
    set_debug,
    venues_option,
)
from greekfire.cli_fix import fix_app
from greekfire.cli_hft import hft_app
from greekfire.cli_models import models_app
from greekfire.cli_output import (
    print_gpu_status,
    print_hpo,
    print_itch,
    print_lobster,
    print_mapping,
    print_preview,
    print_trade,
    print_training,
    spinner,
    status_line,
)
from greekfire.cli_wheel import wheel_app
from greekfire.cli_wheel_run import register as register_wheel_run
from greekfire.core.allocator import keep_freed_memory
from greekfire.core.errors import ConfigError, ConfigErrors, GreekfireError
from greekfire.core.extras import require_extra
from greekfire.core.logging import configure_logging
from greekfire.core.progress import terminal_bars
from greekfire.core.settings import Settings, load_settings, settings_dict

# root options that take a value: the word after them is not the sub-command
_VALUE_OPTIONS = ("--config", "-c", "--log-level")


def named_subcommand(argv: list[str]) -> str | None:
    """The sub-command a command line names (``gpu`` in ``-c s.yaml gpu status``), or None where it names
    none or asks the root for help or the version."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in ("--help", "--version"):
            return None
        elif word in _VALUE_OPTIONS:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


class RootApp(typer.Typer):
    """The ``greekfire`` app. Run as a program, it turns into click commands only the sub-command (or group)
    its command line names: building the options of every command of every system was 33 ms of a ``gpu
    status`` start (measured on a busy 2-core machine; 12 ms for the old, smaller tree). The root's help, an
    unknown or missing sub-command (so click's message and suggestions are whole) and shell completion build
    the whole tree; tests' ``CliRunner`` always does."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = named_subcommand(sys.argv[1:])
        groups = [g for g in self.registered_groups if g.name == name]
        commands = [c for c in self.registered_commands if c.name == name]
        completing = any(k.startswith("_GREEKFIRE_COMPLETE") or k == "_TYPER_COMPLETE_ARGS" for k in os.environ)
        if completing or not (groups or commands):
            return super().__call__(*args, **kwargs)
        every = self.registered_groups, self.registered_commands
        self.registered_groups, self.registered_commands = groups, commands
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self.registered_groups, self.registered_commands = every


app = RootApp(
    cls=ErrorReportingGroup,
    name="greekfire",
    help="GPU-accelerated options research and trading: price, learn, trade, manage risk.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the effective settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")
gpu_app = typer.Typer(help="GPU resource manager: devices, health, metrics server.", no_args_is_help=True)
app.add_typer(gpu_app, name="gpu")

data_app = typer.Typer(help="Options data: storage checks, synthetic market, real SPX quotes.", no_args_is_help=True)
app.add_typer(data_app, name="data")
train_app = typer.Typer(help="Train models: the options pricing network (Lightning).", no_args_is_help=True)
app.add_typer(train_app, name="train")
serve_app = typer.Typer(help="HTTP servers: the pricing inference server, the trading API, the wheel dashboard.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")
market_app = typer.Typer(help="Market core: ITCH files, LOBSTER checks, books.", no_args_is_help=True)
app.add_typer(market_app, name="market")
app.add_typer(fix_app, name="fix")
app.add_typer(hft_app, name="hft")
app.add_typer(api_key_app, name="api-key")
app.add_typer(wheel_app, name="wheel")
register_wheel_run(wheel_app)
app.add_typer(models_app, name="models")
serve_app.command("trading")(serve_trading_cmd)
serve_app.command("wheel")(serve_wheel_cmd)

console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("greekfire.cli")


class State:
    """What the root callback parsed, handed to every sub-command."""

    def __init__(self) -> None:
        self.config: Path | None = None
        self.log_level: str | None = None
        self.log_json: bool = False
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config)
            lg = self._settings.logging
            configure_logging(
                level=self.log_level or lg.level,
                json_format=self.log_json or lg.json_format,
                file=lg.file,
                max_bytes=lg.max_bytes,
                backup_count=lg.backup_count,
            )
            if self._settings.quant.keep_freed_memory:
                status = keep_freed_memory()
                if status != "ok":
                    logging.getLogger("greekfire").debug("quant.keep_freed_memory: %s", status)
        return self._settings


STATE = State()


def _version(value: bool) -> None:
    if value:
        console.print(f"greekfire {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML settings file (default: $GREEKFIRE_CONFIG)")
    ] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING, ERROR")] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="log JSON lines instead of the console")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """greekfire: one system that prices, learns, trades, manages risk and runs in production."""
    if log_level is not None and log_level.upper() not in LOG_LEVELS:
        say_error("--log-level", f"bad value {log_level!r}: allowed {', '.join(LOG_LEVELS)} (any case)")
        raise typer.Exit(EXIT_USAGE)
    STATE.config = config
    STATE.log_level = log_level.upper() if log_level else None
    set_debug(STATE.log_level == "DEBUG")
    STATE.log_json = log_json


def settings() -> Settings:
    """The effective settings; a bad setting raises ``ConfigErrors``, which the ``greekfire`` group prints as
    one line naming each field path and value before it exits 2."""
    return STATE.settings


def print_json(data: Any) -> None:
    """Print plain JSON to stdout (no Rich markup, so it can be piped)."""
    typer.echo(json.dumps(data, indent=2, default=str))


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of YAML")] = False,
) -> None:
    """Print the effective settings (defaults + YAML + environment), secrets masked."""
    data = settings_dict(settings())
    if as_json:
        print_json(data)
    else:
        import yaml

        typer.echo(yaml.safe_dump(data, sort_keys=False))


@config_app.command("reference")
def config_reference(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write the Markdown page here (default: print it)")
    ] = None,
) -> None:
    """Print every setting (key, type, default, environment variable, meaning) as the Markdown page
    docs/configuration.md; it reads the settings models, not the effective settings."""
    from greekfire.core.settings_doc import write_reference

    text = write_reference(out)
    if out is None:
        typer.echo(text, nl=False)
    else:
        err_console.print(f"wrote {out}")


# --------------------------------------------------------------------------------------------------------
# gpu: device discovery, health and the /health + /metrics server (greekfire.gpu, greekfire.api.gpu)
@gpu_app.command("status")
def gpu_status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Devices, health, memory, cloud and the reasons for anything missing."""
    from greekfire.gpu.manager import GpuManager

    manager = GpuManager(settings())
    try:
        data = manager.status()
    finally:
        manager.stop()
    if as_json:
        print_json(data)
        return
    print_gpu_status(console, data)


@gpu_app.command("serve")
def gpu_serve(
    host: Annotated[str | None, typer.Option("--host", help="bind address (default: gpu.host)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="port (default: gpu.port)")] = None,
) -> None:
    """Serve GET /health (JSON) and GET /metrics (Prometheus) for this node's GPUs."""
    require_extra("serve", "greekfire gpu serve")  # one line naming the extra, not a bare ModuleNotFoundError
    from greekfire.api.gpu import serve

    s = settings()
    serve(s, host=host or s.gpu.host, port=port or s.gpu.port)


# --------------------------------------------------------------------------------------------------------
# data: storage checks, the synthetic market and the real SPX loader (greekfire.data)
def _print_mapping(title: str, data: dict[str, Any], units: dict[str, str] | None = None, out: Console = console) -> None:
    print_mapping(out, title, data, units)


@data_app.command("check")
def data_check(
    url: Annotated[str, typer.Argument(help="path or URL: s3://bucket/prefix, gs://..., az://..., a folder")],
    write: Annotated[bool, typer.Option("--write", help="also write and delete a probe object")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Test a storage location and say plainly what is wrong (exit 1 when it fails)."""
    from greekfire.data.storage_check import check_storage

    result = check_storage(url, settings(), write=write)
    if as_json:
        print_json(result.to_dict())
    elif result.ok:
        console.print(f"[green]OK[/green] {result.url}: {result.message} ({result.seconds:.2f} s)")
    if not result.ok:
        if not as_json:
            say_error("data check", f"{result.url} [{result.problem}]: {result.message}"
                       + (f"; fix: {result.hint}" if result.hint else ""))
        raise typer.Exit(EXIT_DATA)


@data_app.command("generate")
def data_generate(
    out: Annotated[str | None, typer.Option("--out", help="folder or URL (default: <storage.root>/synthetic)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="random seed (same seed, same market)")] = 7,
    days: Annotated[int, typer.Option("--days", min=1, help="quote days (business days)")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Generate a synthetic Heston market and write it as date-partitioned Parquet."""
    from greekfire.data.synthetic import generate_to

    s = settings()
    summary = generate_to(out or f"{s.storage.root.rstrip('/')}/synthetic", s, seed=seed, days=days)
    print_json(summary) if as_json else _print_mapping("synthetic market", summary)


@data_app.command("spx")
def data_spx(
    path: Annotated[Path, typer.Argument(help="vendor CSV of SPX/SPXW quotes (e.g. SPX_2018.csv)")],
    out: Annotated[str | None, typer.Option("--out", help="a .csv/.parquet file: every quote with ttm, rate, "
                                            "div_yield, market_price (what `greekfire price` reads); another "
                                            "path or URL: quotes and S&P 500 bars as partitions")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Load real SPX quotes with the S&P 500 history; report rows, bad rows and how the levels line up.
    ``--out FILE.csv`` (or ``.parquet``) writes every quote with the inputs ``greekfire price`` reads."""
    require_file(path, "vendor CSV")
    from greekfire.data.spx import SPX_SUMMARY_UNITS, spx_report

    summary = spx_report(path, out, settings())
    print_json(summary) if as_json else _print_mapping(f"SPX quotes: {path.name}", summary, SPX_SUMMARY_UNITS)


# --------------------------------------------------------------------------------------------------------
# train / serve: the pricing model (greekfire.ml, greekfire.api.pricing)
@train_app.command("pricing")
def train_pricing_cmd(
    overrides: Annotated[list[str] | None, typer.Argument(help="Hydra overrides, e.g. optim.lr=1e-3 trainer.max_epochs=5")] = None,
    preset: Annotated[str, typer.Option("--preset", "-p", help="experiment in configs/train/experiment/ (smoke, liu_mlp, ...)")] = "smoke",
    experiment: Annotated[Path | None, typer.Option("--experiment", "-e", help="an experiment YAML file instead of a preset")] = None,
    data: Annotated[str | None, typer.Option("--data", help="train on these quotes instead of the experiment's data: "
                                             "a folder written by `greekfire data generate`, or any Parquet file or "
                                             "folder (local or s3://...) in the quote schema, or prepared samples")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue this experiment's run from its last checkpoint")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Train the options pricing model; prints test scores, tracking ids and the checkpoint's full path.

    Progress: a bar when stdout is a terminal, else a log line every trainer.progress_interval_s seconds
    and at each epoch's end (trainer.enable_progress_bar=true|false forces one)."""
    if data is not None and "://" not in data and not Path(data).exists():
        raise UsageProblem(f"--data {data!r} does not exist (a folder or Parquet file of quotes, or an s3:// URL)")
    from greekfire.ml.train import run_training

    s = settings()
    try:
        result = run_training(s, preset=preset, config_file=experiment, overrides=overrides or [], resume=resume,
                              data_path=data)
    except (ConfigErrors, ConfigError, GreekfireError) as exc:
        raise fail("train pricing", exc) from None
    if result.rank != 0:  # under DDP every rank returns here; rank 0 speaks for the run
        return
    summary = result.as_dict()
    if as_json:
        print_json(summary)
        return
    print_training(console, result.name, result.version, summary, result.scores)
    # paths as plain lines, never cut or wrapped by a table: scripts and people copy them whole
    if result.resumed_from is not None:
        typer.echo(f"resumed from: {result.resumed_from}")
    typer.echo(f"run: {result.run_dir}")
    if result.last_checkpoint is not None:
        typer.echo(f"last checkpoint: {result.last_checkpoint}")
    typer.echo(f"checkpoint: {result.best_checkpoint or result.last_checkpoint}")


def _experiment_and_overrides(args: list[str]) -> tuple[str | None, list[str]]:
    """``+experiment=NAME`` (or ``experiment=NAME``) picks the experiment; the rest are Hydra overrides."""
    name, rest = None, []
    for a in args:
        key, _, value = a.lstrip("+").partition("=")
        if key == "experiment" and value:
            name = value
        else:
            rest.append(a)
    return name, rest


@train_app.command("run")
def train_run_cmd(
    overrides: Annotated[list[str] | None, typer.Argument(help="+experiment=NAME and Hydra overrides, e.g. "
                                                          "+experiment=smoke optim.lr=1e-3")] = None,
    nproc: Annotated[int, typer.Option("--nproc", help="worker processes on this node (GPUs or CPU ranks)")] = 1,
    nnodes: Annotated[str, typer.Option("--nnodes", help="nodes: M, or MIN:MAX for an elastic job")] = "1",
    rdzv: Annotated[str | None, typer.Option("--rdzv", help="host:port of the c10d rendezvous, the same on every "
                                             "node (default: a free loopback port, one node)")] = None,
    max_restarts: Annotated[int, typer.Option("--max-restarts", help="restarts of the group after a failure")] = 0,
    backend: Annotated[str, typer.Option("--backend", help="auto, gloo, nccl or horovod (auto: nccl on GPUs, "
                                         "else gloo)")] = "auto",
    job_id: Annotated[str | None, typer.Option("--job-id", help="rendezvous id and key of the shared "
                                               "checkpoints, the same on every node (default: from the config)")] = None,
    checkpoint_url: Annotated[str | None, typer.Option("--checkpoint-url", help="shared storage for last.ckpt: "
                                                       "a folder or URL (default: <training.runs_dir>/elastic)")] = None,
    data: Annotated[str | None, typer.Option("--data", help="train on these quotes or samples (see train pricing)")] = None,
    input_noise: Annotated[float, typer.Option("--input-noise", help="augmentation: multiplicative noise on the "
                                               "inputs, a fraction (0.01: 1 %); 0: none")] = 0.0,
    multirun: Annotated[bool, typer.Option("--multirun", help="a sweep: key=a,b or key=range(..) overrides give "
                                           "one run per combination, trained in turn")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Run an experiment: `+experiment=NAME` plus overrides; with --nproc/--nnodes under torchrun (DDP).

    One process and no rendezvous runs `train pricing`'s loop in this process. Otherwise this node starts
    torchrun's elastic agent: every node runs the same command with the same --rdzv and --nnodes; a worker
    that dies restarts the group (--max-restarts) from the last checkpoint on shared storage."""
    name, rest = _experiment_and_overrides(overrides or [])
    from greekfire.training.distributed import LaunchOptions, launch

    opts = LaunchOptions(nproc=nproc, nnodes=nnodes, rdzv=rdzv, max_restarts=max_restarts, backend=backend,
                         job_id=job_id, checkpoint_url=checkpoint_url)
    s = settings()
    if multirun:
        _train_sweep(s, opts, name or "smoke", rest, data, input_noise, as_json)
        return
    try:
        summary = launch(s, opts, preset=name or "smoke", overrides=rest, data_path=data, input_noise=input_noise)
    except (ConfigErrors, ConfigError, GreekfireError) as exc:
        raise fail("train run", exc) from None
    if summary is None:  # another node held rank 0 and reports
        typer.echo("this node's workers finished; the node with rank 0 reports the result")
        return
    if as_json:
        print_json(summary)
        return
    print_training(console, summary["name"], summary["version"], summary, summary.get("scores", {}))
    for key in ("resumed_from", "run_dir", "last_checkpoint", "best_checkpoint"):
        if summary.get(key):
            typer.echo(f"{key.replace('_', ' ')}: {summary[key]}")


def _train_sweep(s: Settings, opts: Any, preset: str, overrides: list[str], data: str | None, input_noise: float,
                 as_json: bool) -> None:
    """``train run --multirun``: every combination validated first, then trained in turn; a table (or JSON)."""
    from greekfire.training.distributed import launch
    from greekfire.training.sweep import run_sweep

    def one(combo: list[str]) -> dict[str, Any] | None:
        if not as_json:
            typer.echo(f"run: +experiment={preset} {' '.join(combo)}")
        return launch(s, opts, preset=preset, overrides=combo, data_path=data, input_noise=input_noise)

    try:
        rows = run_sweep(s, preset, overrides, one)
    except (ConfigErrors, ConfigError, GreekfireError) as exc:
        raise fail("train run", exc) from None
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"sweep of {preset}: {len(rows)} runs")
    for col in ("run", "overrides", "version", "val_rmse", "test_rmse", "run folder"):
        table.add_column(col)
    values = [dict(o.split("=", 1) for o in r["overrides"] if "=" in o) for r in rows]
    swept = [k for k in values[0] if len({v.get(k) for v in values}) > 1] if values else []
    for r, v in zip(rows, values, strict=True):
        sm = r["summary"] or {}
        sc = sm.get("scores", {})
        shown = " ".join(f"{k}={v[k]}" for k in swept)
        table.add_row(str(r["run"]), shown, str(sm.get("version", "-")), f"{sc.get('val_rmse', float('nan')):.5f}",
                      f"{sc.get('test_rmse', float('nan')):.5f}", str(sm.get("run_dir", "-")))
    console.print(table)


@train_app.command("hpo")
def train_hpo_cmd(
    study: Annotated[str, typer.Option("--study", help="study name (created when missing; a rerun adds trials)")],
    trials: Annotated[int, typer.Option("--trials", "-n", min=1, help="trials to run now, over all workers")] = 8,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="parallel worker processes")] = 2,
    storage: Annotated[str | None, typer.Option("--storage", help="SQLAlchemy URL of the study storage (default: "
                                                "training.hpo_storage_url; sqlite:///file.db for one worker only)")] = None,
    space: Annotated[str, typer.Option("--space", help="search space: a name in configs/train/hpo/ or a YAML file")] = "smoke",
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Hyperparameter search with Optuna: parallel workers share the study, poor trials are pruned each
    epoch, and the best trial is trained in full and registered as challenger."""
    from greekfire.training.hpo import load_space, run_study

    s = settings()
    try:
        config = load_space(space, s)
        show = console.is_terminal and not as_json
        with _hpo_progress(show, trials) as on_progress:
            result = run_study(config, s, study=study, trials=trials, workers=workers, storage=storage,
                               on_progress=on_progress)
    except (ConfigErrors, ConfigError) as exc:  # exit 2; an unreachable storage or a study with no
        raise fail("train hpo", exc) from None   # completed trial ends as one line with exit 1 (the group)
    if as_json:
        print_json(result.as_dict())
        return
    print_hpo(console, result)


def _hpo_progress(show: bool, total: int) -> Any:
    """A context giving the progress hook of ``train hpo``: a bar on a terminal, else a log line per change."""
    from contextlib import contextmanager

    @contextmanager
    def bar() -> Any:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[state]}"),
                      TimeElapsedColumn(), console=console, transient=False) as progress:
            task = progress.add_task("trials", total=total, state="starting workers")

            def update(p: Any) -> None:
                best = f" best {p.best_value:.4g}" if p.best_value is not None else ""
                progress.update(task, completed=p.done, state=f"complete {p.complete} pruned {p.pruned} failed "
                                f"{p.failed} running {p.running}{best}")
            yield update

    @contextmanager
    def lines() -> Any:
        def update(p: Any) -> None:
            best = f" best {p.best_value:.4g}" if p.best_value is not None else ""
            log.info("trials %d/%d: complete %d pruned %d failed %d running %d%s", p.done, p.total, p.complete,
                     p.pruned, p.failed, p.running, best)
        yield update

    return bar() if show else lines()


@serve_app.command("pricing")
def serve_pricing_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="checkpoint path, run folder (its best, else last "
                                       "checkpoint), MLflow URI (runs:/...), or `registry`: the "
                                       "registry's champion, A/B against its challenger (models.*)")],
    host: Annotated[str | None, typer.Option("--host", help="default: api.host")] = None,
    port: Annotated[int | None, typer.Option("--port", help="default: api.port")] = None,
    no_batching: Annotated[bool, typer.Option("--no-batching", help="one forward pass per request")] = False,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:1 (default: quant.device; auto: a healthy GPU with gpu.min_free_mb free, else the CPU)")] = None,
) -> None:
    """Serve a trained pricing model: POST /v1/price (JSON or Arrow), /health, /metrics."""
    from greekfire.api.pricing import serve

    try:
        serve(settings(), model, host=host, port=port, batching=not no_batching, device=device)
    except (ConfigErrors, ConfigError, GreekfireError) as exc:
        raise fail("serve pricing", exc) from None


# --------------------------------------------------------------------------------------------------------
# market: feeds and books (greekfire.market)
def _market_run(command: str, fn: Any, *args: Any, show_progress: bool = False, **kw: Any) -> dict[str, Any]:
    """Run a market library function; with ``show_progress`` (and stderr on a terminal) its progress hook
    draws bars over bytes read and messages or events done."""
    try:
        with terminal_bars(err_console, show_progress) as progress:
            return fn(*args, progress=progress, **kw)
    except GreekfireError as exc:
        raise fail(command, exc) from None


@market_app.command("lobster-check")
def market_lobster_check(
    messages: Annotated[Path, typer.Argument(help="LOBSTER message CSV, or the sample zip holding both files")],
    book: Annotated[Path | None, typer.Argument(help="LOBSTER order-book CSV (not needed with a zip)")] = None,
    levels: Annotated[int | None, typer.Option("--levels", help="levels in the book file (default: from its name)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Row k-1 of the book file + message k through our book == row k? Per-level match (exit 1 if levels
    1..N-1 are not 100%)."""
    require_file(messages, "message file")
    require_file(book, "order-book file")
    from greekfire.market.lobster import check_files

    data = _market_run("market lobster-check", check_files, messages, book, levels, show_progress=not as_json)
    print_json(data) if as_json else print_lobster(console, data)
    if not data["ok"]:
        raise typer.Exit(1)


@market_app.command("lobster-replay")
def market_lobster_replay(
    messages: Annotated[Path, typer.Argument(help="LOBSTER message CSV, or the sample zip holding both files")],
    book: Annotated[Path | None, typer.Argument(help="LOBSTER order-book CSV (not needed with a zip)")] = None,
    levels: Annotated[int | None, typer.Option("--levels", help="levels in the book file (default: from its name)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Plain replay from the first row: throughput and agreement (drifts below level 1, by design)."""
    require_file(messages, "message file")
    require_file(book, "order-book file")
    from greekfire.market.lobster import replay_files

    data = _market_run("market lobster-replay", replay_files, messages, book, levels, show_progress=not as_json)
    print_json(data) if as_json else print_lobster(console, data)


@market_app.command("itch")
def market_itch(
    path: Annotated[Path, typer.Argument(help="ITCH 5.0 file, plain or gzipped")],
    framing: Annotated[str | None, typer.Option("--framing", help="length (Nasdaq) or zero_prefix")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Decode an ITCH file, build per-stock books; counts, bad input with positions, top of book."""
    require_file(path, "ITCH file")
    from greekfire.market.itch import file_report

    data = _market_run("market itch", file_report, path, framing or settings().market.itch_framing,
                       show_progress=not as_json)
    print_json(data) if as_json else print_itch(console, data)


# --------------------------------------------------------------------------------------------------------
# price: value, Greeks and implied vols for a CSV/Parquet file of options (greekfire.data.pricing)
class _PriceCommand(TyperCommand):
    """``greekfire price``, whose ``--model`` help lists the registered pricing engines. The registry is
    imported only when that help is shown: it loads torch, which ``greekfire --help`` should not wait for."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from greekfire.quant import DEFAULT_ENGINES, engine_names

        by_style = ", ".join(
            f"{'|'.join(engine_names(style))} ({style}; default {default})" for style, default in DEFAULT_ENGINES.items()
        )
        for param in self.params:
            if param.name == "model":
                param.help = (  # type: ignore[attr-defined]
                    f"a registered pricing engine: {by_style}; more with --engine-module or an installed "
                    "greekfire.pricing_engines plugin"
                )
        super().format_help(ctx, formatter)


@app.command("price", cls=_PriceCommand)
def price_cmd(
    input_path: Annotated[Path, typer.Argument(help="CSV or Parquet of options (by suffix)")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="CSV or Parquet to write (by suffix); - writes CSV to stdout "
                     "(the summary then goes to stderr); default: print a preview and the summary"),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option("--columns", help="read a vendor layout: a preset (spx, optopsy) or FIELD=COLUMN pairs "
                     "(right=type,strike=strike,...); ttm, mid price, rate and dividend yield are computed"),
    ] = None,
    style: Annotated[str, typer.Option("--style", help="european or american")] = "european",
    model: Annotated[str | None, typer.Option("--model", help="a registered pricing engine")] = None,
    engine_module: Annotated[
        list[str] | None,
        typer.Option("--engine-module", help="import this module first (it registers pricing engines); repeatable"),
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="tree steps for --model crr")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="float64 or float32")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Price every row: value, Greeks, implied vol where market_price is given, and an error code."""
    require_file(input_path, "input file")
    import os
    import sys

    from greekfire.data.pricing import SUMMARY_UNITS, price_chain, price_file
    from greekfire.quant import import_engine_modules

    q = settings().quant
    to_stdout = output is not None and str(output) == "-"
    opts: dict[str, Any] = dict(columns=columns, style=style, model=model, steps=steps or q.tree_steps,
                                device=device or q.device, dtype=dtype or q.dtype,
                                background_compile=q.background_compile)
    try:
        import_engine_modules(engine_module or ())
        # the bar on stderr, a terminal only: stdout may carry the priced rows (``-o -``)
        with terminal_bars(err_console, not as_json) as progress:
            if output is None or to_stdout:
                result, data = price_chain(input_path, **opts, progress=progress)
            else:
                data = price_file(input_path, output, **opts, progress=progress)
    except GreekfireError as exc:
        raise fail("price", exc) from None
    title = f"priced {input_path}"
    if to_stdout:  # stdout carries the rows and nothing else
        try:
            result.to_csv(sys.stdout, index=False)
            sys.stdout.flush()
        except BrokenPipeError:  # the reader stopped early (`| head`): not an error; quiet the final flush
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        data["output"] = "-"
        if as_json:
            typer.echo(json.dumps(data, indent=2, default=str), err=True)
        else:
            _print_mapping(title, data, SUMMARY_UNITS, err_console)
        return
    if output is None and not as_json:
        print_preview(console, result)
    print_json(data) if as_json else _print_mapping(title, data, SUMMARY_UNITS)


# --------------------------------------------------------------------------------------------------------
# demo: one stage per system that exists. Each stage is ``module:function`` taking the settings and
# returning a mapping of what it did (printed in the summary table).
DEMO_STAGES: list[tuple[str, str]] = [
    # in layer order: the core first, then what stands on it
    ("foundation", "greekfire.core.demo:run_demo"),
    ("gpu", "greekfire.gpu.demo:run_demo"),
    ("pricing", "greekfire.quant.demo:run_demo"),
    ("market", "greekfire.market.demo:run_demo"),
    ("data", "greekfire.data.demo:run_demo"),
    ("trading", "greekfire.strategies.demo:run_demo"),
    ("training", "greekfire.ml.demo:run_demo"),
]


@app.command("demo")
def demo(
    only: Annotated[list[str] | None, typer.Option("--only", help="run only these stages")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Run one short stage per system on embedded defaults and print a summary table."""
    names = [name for name, _ in DEMO_STAGES]
    unknown = [o for o in only or [] if o not in names]
    if unknown:
        raise UsageProblem(f"--only {unknown[0]!r} is not a demo stage: allowed {', '.join(names)}")
    s = settings()
    s.home.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    failed = 0
    selected = [(name, target) for name, target in DEMO_STAGES if not only or name in only]
    for name, target in selected:
        mod_name, fn_name = target.split(":")
        if not as_json:
            console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
            with spinner(console, f"demo stage {name} ({len(results) + 1}/{len(selected)}) running", not as_json):
                summary = fn(s)
            status = "ok"
        except GreekfireError as exc:
            summary, status = {"error": str(exc)}, "failed"
            failed += 1
        except Exception as exc:  # a demo stage must not hide the others
            log.exception("demo stage %s failed", name)
            summary, status = {"error": f"{type(exc).__name__}: {exc}"}, "failed"
            failed += 1
        results.append(
            {"stage": name, "status": status, "seconds": round(time.perf_counter() - t0, 2), "summary": summary}
        )
    if as_json:
        print_json(results)
    else:
        table = Table(title="greekfire demo", show_lines=True)
        table.add_column("stage", style="bold")
        table.add_column("status")
        table.add_column("time (s)", justify="right")
        table.add_column("what it did")
        for r in results:
            what = "\n".join(f"{k}: {v}" for k, v in r["summary"].items())
            colour = "green" if r["status"] == "ok" else "red"
            table.add_row(r["stage"], f"[{colour}]{r['status']}[/{colour}]", f"{r['seconds']:.1f}", what)
        console.print(table)
    if failed:
        raise typer.Exit(1)


# --------------------------------------------------------------------------------------------------------
# trade: the trading engine with a strategy against simulated venues (greekfire.trading, greekfire.strategies)
@app.command("trade")
def trade(
    paper: Annotated[bool, typer.Option("--paper", help="trade against simulated venues (the only mode so far)")] = False,
    duration: Annotated[float | None, typer.Option("--duration", help="seconds to run (default trading.duration_s)")] = None,
    strategy: Annotated[str | None, typer.Option("--strategy", help="strategy name or module:Class")] = None,
    venues: Annotated[str | None, typer.Option("--venues", help="simulated venues (1-16), or `fix`: trade over FIX 4.4 with a `greekfire fix exchange` at fix.host:fix.port")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Run the trading engine and print orders, fills, denials, P&L, Greeks and internal latency."""
    if duration is not None and not duration > 0:
        raise UsageProblem(f"--duration {duration!r}: must be a positive number of seconds")
    if not paper:
        raise UsageProblem("only paper trading is available: run `greekfire trade --paper`")
    where = venues_option(venues)
    from greekfire.strategies.paper import format_status, run_paper

    s = settings()
    try:
        with status_line(console, "paper: starting", not as_json) as line:
            # on a terminal a status line refreshed once a second; piped or --json, a log line on stderr every 10 s
            out = run_paper(s, duration, strategy, where,
                            status=lambda st: line(format_status(st)) if line else log.info("%s", format_status(st)),
                            status_interval_s=1.0 if line else 10.0)
    except (ConfigError, ConfigErrors) as exc:
        raise fail("trade", exc) from None
    if as_json:
        print_json(out)
        return
    print_trade(console, out)


if __name__ == "__main__":  # pragma: no cover
    app()
