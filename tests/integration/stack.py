"""Greekfire's services on loopback with one real Prometheus scraping them all, for the observability tests.

:func:`expressions` collects every PromQL expression of the dashboards (deploy/grafana/dashboards/*.json) and of
the alert rules (deploy/prometheus/*-rules.yml, a glob: rule files added later are included);
:func:`data_queries` turns one expression into the queries that must return series (see its docstring);
:class:`Stack` starts the services in parallel, a pushgateway and Prometheus (scrape interval 1 s).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import yaml

from conftest import command_env, free_port, poll_until, port_open

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES_DIR = ROOT / "deploy" / "prometheus"
CLI = [sys.executable, "-c", "from greekfire.cli import app; app()"]
COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}


@dataclass(frozen=True)
class Expression:
    """A PromQL expression and where it comes from (``dashboard gpu: GPU utilization`` or ``rule ...``)."""

    source: str
    expr: str
    alert: bool = False


def dashboard_expressions() -> list[Expression]:
    """Every target expression of every panel of the committed dashboards."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board.get("panels", []):
            for t in panel.get("targets", []):
                out.append(Expression(f"dashboard {path.stem}: {panel['title']} [{t.get('refId')}]", t["expr"]))
    return out


def rule_files() -> list[Path]:
    """The alert and recording rule files (``deploy/prometheus/*-rules.yml``)."""
    return sorted(RULES_DIR.glob("*-rules.yml"))


def rule_expressions() -> list[Expression]:
    """Every ``expr`` of every rule of every rule file."""
    out = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("alert") or rule.get("record")
                out.append(Expression(f"rule {path.name}: {name}", str(rule["expr"]).strip(), "alert" in rule))
    return out


def expressions() -> list[Expression]:
    """Dashboard and rule expressions, dashboards first."""
    return dashboard_expressions() + rule_expressions()


def _without_offsets(node: Any) -> Any:
    if isinstance(node, promql_parser.VectorSelector) and node.offset is not None:
        return promql_parser.parse(str(node).rsplit(" offset ", 1)[0])
    if isinstance(node, promql_parser.MatrixSelector) and node.vector_selector.offset is not None:
        return promql_parser.parse(str(node).rsplit(" offset ", 1)[0])
    return None


def _unwrap(node: Any) -> Any:
    while isinstance(node, promql_parser.ParenExpr):
        node = node.expr
    return node


def _has_selector(node: Any) -> bool:
    """Whether the expression reads any series (``4 * 86400`` or ``time()`` read none)."""
    found = False

    def visit(n: Any) -> bool:
        nonlocal found
        if isinstance(n, promql_parser.VectorSelector | promql_parser.MatrixSelector):
            found = True
            return False
        return True

    promql_parser.walk(node, pre_visit=visit)
    return found


def _operands(node: Any) -> list[Any]:
    """The parts of an alert condition whose series must exist (see :func:`data_queries`)."""
    node = _unwrap(node)
    if isinstance(node, promql_parser.BinaryExpr):
        op = str(node.op)
        bool_modifier = node.modifier is not None and getattr(node.modifier, "return_bool", False)
        if op in COMPARISONS and not bool_modifier:
            return [p for side in (node.lhs, node.rhs) for p in _operands(side)]
        if op in ("and", "or"):
            return _operands(node.lhs) + _operands(node.rhs)
        if op == "unless":
            return _operands(node.lhs)
    return [node] if _has_selector(node) else []  # a number or time(): nothing to find


def data_queries(e: Expression) -> list[str]:
    """The queries that must return at least one series for ``e`` to count as backed by data.

    A dashboard or recording-rule expression is evaluated as it is. An alert rule is a condition that is
    empty while all is well (``x > 0.9``), so its expression is parsed (promql-parser, a real PromQL parser)
    and split at the top: a filtering comparison (``==, !=, >, <, >=, <=`` without ``bool``) is replaced by
    its operands that read series (not ``4 * 86400``), ``a and b`` / ``a or b`` by both sides, ``a unless b`` by ``a``; each part left
    must return series. Selectors' ``offset`` modifiers are dropped: a Prometheus started for the test holds
    no data from before it started, while the series are the same.
    """
    tree = promql_parser.transform(promql_parser.parse(e.expr), post_visit=_without_offsets)
    parts = _operands(tree) if e.alert else [tree]
    return [str(p) for p in parts]


# ------------------------------------------------------------------------------------------------ services
def _stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to the process's group (its own session: the HFT pipeline's stage processes go too), then
    SIGKILL to what is left after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


@dataclass
class Stack:
    """Services started into ``tmp``; ``targets`` maps a Prometheus job name to ``host:port`` scraped."""

    tmp: Path
    shared_data: Path
    targets: dict[str, str] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    job_process: dict[str, str] = field(default_factory=dict)  # Prometheus job -> the process behind it
    prometheus_url: str = ""
    started_after_s: list[float] = field(default_factory=list)  # when each starter finished (diagnostics)
    _exit: ExitStack = field(default_factory=ExitStack)

    # -- helpers ----------------------------------------------------------------------------------------
    def _popen(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[Any]:
        log_path = self.tmp / f"{name}.log"
        log = log_path.open("w")
        self._exit.callback(log.close)
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp,
                                start_new_session=True)
        self._exit.callback(_stop, proc)
        self.logs[name] = log_path
        self.procs[name] = proc
        return proc

    def _scrape(self, job: str, name: str, target: str) -> None:
        """Have Prometheus scrape ``target`` as ``job``; ``name`` is the process behind it (for diagnostics)."""
        self.targets[job] = target
        self.job_process[job] = name

    def _wait_port(self, name: str, port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 90) -> None:
        def up() -> bool:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{name} exited: {self.logs[name].read_text()[-3000:]}")
            return port_open("127.0.0.1", port)

        assert poll_until(up, timeout, 0.1), f"{name} did not listen on {port}: " + (
            self.logs[name].read_text()[-3000:] if name in self.logs else "")

    # -- services ---------------------------------------------------------------------------------------
    def gpu(self) -> None:
        """The GPU manager's app over the fake NVML of the unit tests (two GPUs), in a process of its own (so
        its /metrics holds only what the GPU manager exports)."""
        port = free_port()
        code = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests' / 'unit' / 'gpu')!r})\n"
                "import uvicorn\n"
                "from gpu_fake_nvml import FakeNvml, gpus\n"
                "from greekfire.api.gpu import build_app\n"
                "from greekfire.core.settings import load_settings\n"
                "from greekfire.gpu.cloud import CloudInfo\n"
                "app = build_app(load_settings(overrides={'gpu.sample_interval_s': 0.5}), nvml=FakeNvml(gpus(2)),"
                " cloud=CloudInfo())\n"
                f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')\n")
        env = command_env(GREEKFIRE_HOME=str(self.tmp / "gpu"), GREEKFIRE_GPU__DMI_ROOT=str(self.tmp))
        proc = self._popen("gpu", [sys.executable, "-c", code], env)
        self._wait_port("gpu", port, proc)
        self._scrape("greekfire-gpu", "gpu", f"127.0.0.1:{port}")

    def _price_traffic(self) -> None:
        """Good requests of 1, 4 and 16 rows with their observed prices (the A/B test joins them), a bad one."""
        url, width = self._pricing
        with httpx.Client(base_url=url, timeout=30) as http:
            for n in (1, 4, 16, 1, 4, 16):
                r = http.post("/v1/price", json={"contract": [[0.1 * (i + 1)] * width for i in range(n)]})
                assert r.status_code == 200, r.text
                answer = r.json()
                observed = http.post("/v1/observed", json={"request_id": answer["request_id"],
                                                           "price": [p * 1.01 for p in answer["price"]]})
                assert observed.status_code == 200, observed.text
            assert http.post("/v1/price", json={"contract": [[1.0], [1.0, 2.0]]}).status_code == 422

    def trading(self) -> None:
        """`greekfire fix exchange` and `greekfire serve trading --venues fix` trading with it, with keys."""
        from greekfire.api.auth import ApiKeyStore

        keys_url = f"sqlite:///{self.tmp / 'keys.db'}"
        store = ApiKeyStore(keys_url)
        _, self.trade_key = store.create("observability test", ["read", "trade", "admin"])
        store.close()
        fix_port = free_port()
        common = {"GREEKFIRE_FIX__PORT": str(fix_port), "GREEKFIRE_FIX__RECONNECT_S": "0.2",
                  "GREEKFIRE_FIX__DATA_DICTIONARY": str(self.shared_data / "fix44" / "FIX44.xml")}
        ex = self._popen("fix-exchange", CLI + ["fix", "exchange"],
                         command_env(GREEKFIRE_HOME=str(self.tmp / "exchange"), **common))
        self._wait_port("fix-exchange", fix_port, ex)
        port = free_port()
        env = command_env(GREEKFIRE_HOME=str(self.tmp / "trader"), GREEKFIRE_DATABASE__URL=keys_url, **common)
        proc = self._popen("trading", CLI + ["serve", "trading", "--venues", "fix", "--host", "127.0.0.1",
                                             "--port", str(port)], env)
        self._wait_port("trading", port, proc)
        self._scrape("greekfire-trading", "trading", f"127.0.0.1:{port}")
        self._trading_url = f"http://127.0.0.1:{port}"

    def _trading_traffic(self) -> None:
        with httpx.Client(base_url=self._trading_url, headers={"X-API-Key": self.trade_key}, timeout=10) as http:
            quoted: list[dict[str, Any]] = []

            def quotes() -> bool:
                nonlocal quoted
                quoted = [i for i in http.get("/v1/instruments").json() if i.get("ask")]
                return bool(quoted)

            assert poll_until(quotes, 60, 0.2), "the FIX engine has no quotes"
            inst = quoted[0]
            for _ in range(3):  # marketable: fills
                http.post("/v1/orders", json={"symbol": inst["symbol"], "side": "buy", "qty": 1,
                                              "price": round(inst["ask"] * 1.01, 2), "tif": "IOC"})
            http.post("/v1/orders", json={"symbol": inst["symbol"], "side": "buy", "qty": 1,
                                          "price": round(inst["ask"] * 50, 2)})  # a risk denial (price band)
            http.get("/v1/pnl")
            http.get("/v1/greeks")

    def _keep_busy(self, stop: threading.Event) -> None:
        """Light traffic until ``stop``: a priced row and its observed price, an order and a denied order on
        the trading API every second or so, so rates over the last minute are not flat."""
        url, width = self._pricing
        with httpx.Client(timeout=10) as http:
            while not stop.wait(1.0):
                try:
                    r = http.post(f"{url}/v1/price", json={"contract": [[0.5] * width] * 2})
                    http.post(f"{url}/v1/observed", json={"request_id": r.json()["request_id"],
                                                          "price": [p * 0.99 for p in r.json()["price"]]})
                    h = {"X-API-Key": self.trade_key}
                    inst = next(i for i in http.get(f"{self._trading_url}/v1/instruments", headers=h).json()
                                if i.get("ask"))
                    for price in (inst["ask"] * 1.01, inst["ask"] * 50):  # a fill, a price-band denial
                        http.post(f"{self._trading_url}/v1/orders", headers=h, json={
                            "symbol": inst["symbol"], "side": "buy", "qty": 1, "price": round(price, 2), "tif": "IOC"})
                except (httpx.HTTPError, KeyError, StopIteration, ValueError):
                    continue  # a busy server: the next round tries again

    def wheel(self) -> None:
        """`greekfire serve wheel` over a wheel database with a short put and equity history, and a wheel
        paper run (`greekfire wheel run --paper --metrics-port`)."""
        from greekfire.api.auth import ApiKeyStore
        from greekfire.strategies.wheel.db import WheelDB
        from greekfire.strategies.wheel.state import Transition, WheelState

        db_url = f"sqlite:///{self.tmp / 'wheel.db'}"
        db = WheelDB(db_url)
        j = db.journal("observability")
        now_ns = time.time_ns()
        j.transition(Transition("SPY", WheelState.CASH, WheelState.SHORT_PUT, "open_put", "sold 1 put", now_ns, {}))
        j.trade("observability", now_ns, "SPY", "SPY P 560", -1, 1, 7.5, 0.65, "open")
        expiry_ns = now_ns + 30 * 86400 * 10**9
        db.set_positions([{"instrument_id": 1001, "instrument": "SPY P 560", "symbol": "SPY", "kind": "put",
                           "strike": 560.0, "expiry_ns": expiry_ns, "multiplier": 100.0, "qty": -1, "avg_cost": 7.5,
                           "realized_pnl": 0.0, "fees": 0.65, "mark": 7.0}], now_ns)
        today = date.today()
        for i, eq in enumerate((100_000.0, 101_000.0, 100_500.0)):
            j.snapshot(today - timedelta(days=2 - i), eq, eq / 2, {})
        db.close()
        keys_url = f"sqlite:///{self.tmp / 'wheel-keys.db'}"
        ApiKeyStore(keys_url).close()
        port = free_port()
        env = command_env(GREEKFIRE_HOME=str(self.tmp / "wheel-home"), GREEKFIRE_DATABASE__URL=keys_url)
        proc = self._popen("wheel", CLI + ["serve", "wheel", "--db", db_url, "--host", "127.0.0.1", "--port",
                                           str(port), "--poll", "0.5"], env)
        self._wait_port("wheel", port, proc)
        self._scrape("greekfire-wheel", "wheel", f"127.0.0.1:{port}")
        # the paper run itself (its cycles, denials and reconcile repairs are its own metrics)
        port = free_port()
        run_env = command_env(GREEKFIRE_HOME=str(self.tmp / "wheel-run"))
        proc = self._popen("wheel-run", CLI + ["wheel", "run", "--paper", "--duration", "900", "--db",
                                               f"sqlite:///{self.tmp / 'wheel-run.db'}", "--metrics-port", str(port)],
                           run_env)
        self._wait_port("wheel-run", port, proc)
        self._scrape("greekfire-wheel-run", "wheel-run", f"127.0.0.1:{port}")

    def hft(self) -> None:
        """`greekfire hft replay` of a synthetic ITCH file at a slow rate (it runs through the module: ~6 min),
        metrics on."""
        from greekfire.market import synth

        itch = self.tmp / "synthetic.itch"
        itch.write_bytes(synth.synthetic_stream(150_000, n_stocks=12, seed=3))
        port = free_port()
        env = command_env(GREEKFIRE_HOME=str(self.tmp / "hft"), GREEKFIRE_HFT__METRICS_PORT=str(port),
                          GREEKFIRE_HFT__WORKERS="1", GREEKFIRE_HFT__WAIT="block")
        proc = self._popen("hft", CLI + ["hft", "replay", str(itch), "--source", "file", "--rate", "400"], env)
        self._wait_port("hft", port, proc)

        def publishing() -> bool:  # the pipeline's stages are up and its coordinator published a status
            return "greekfire_hft_stage_latency_us{" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

        assert poll_until(publishing, 120, 0.5, ignore=(httpx.HTTPError,)), self.logs["hft"].read_text()[-3000:]
        self._scrape("greekfire-hft", "hft", f"127.0.0.1:{port}")

    def training_and_pricing(self, pushgateway: str) -> None:
        """A pushgateway; a real tiny training run (`greekfire train run +experiment=smoke`, MLflow's local
        store) pushing to it live and at its end; a failed run's end pushed by the trainer's own function; the
        run registered twice in the model registry as champion and challenger; and `greekfire serve pricing
        --model registry` A/B-serving the two."""
        from greekfire.core.settings import load_settings
        from greekfire.ml.tracking import push_training_metrics
        from greekfire.training.registry import ModelRegistry

        port = free_port()
        proc = self._popen("pushgateway", [pushgateway, f"--web.listen-address=127.0.0.1:{port}",
                                             "--persistence.file="], command_env())
        self._wait_port("pushgateway", port, proc)
        gateway = f"127.0.0.1:{port}"
        home = self.tmp / "training"
        common = {"GREEKFIRE_HOME": str(home), "GREEKFIRE_TRAINING__RUNS_DIR": str(home / "runs"),
                  "GREEKFIRE_MODELS__AUDIT_URL": f"sqlite:///{home / 'audit.db'}",
                  "GREEKFIRE_TRAINING__PUSHGATEWAY_URL": gateway, "GREEKFIRE_GPU__DMI_ROOT": str(self.tmp)}
        train = self._popen("training", CLI + ["train", "run", "--json", "+experiment=smoke",
                                               "tracking.tensorboard=false", "trainer.accelerator=cpu",
                                               "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=2",
                                               "data.n_samples=3000", "trainer.max_epochs=2"],
                            command_env(GREEKFIRE_TRAINING__TORCH_THREADS="1", **common))
        settings = load_settings(overrides={"training.pushgateway_url": gateway, "home": str(home),
                                            "training.runs_dir": str(home / "runs"),
                                            "models.audit_url": common["GREEKFIRE_MODELS__AUDIT_URL"]})
        push_training_metrics(settings, "smoke-failed", status="failed", seconds=3.0, steps=5,
                              error="RuntimeError: diverged")
        assert train.wait(240) == 0, self.logs["training"].read_text()[-3000:]
        self._scrape("pushgateway", "pushgateway", gateway)
        out = self.logs["training"].read_text()
        run_id = json.loads(out[out.rindex("\n{") + 1: out.rindex("}") + 1])["mlflow_run_id"]  # the --json summary
        reg = ModelRegistry(settings)
        try:
            champion, challenger = reg.register(run_id), reg.register(run_id)
            reg.promote(champion, actor="observability test", gate=False)
            reg.promote(challenger, alias="challenger", actor="observability test", gate=False)
        finally:
            reg.close()
        port = free_port()
        env = command_env(GREEKFIRE_MODELS__AB_CHALLENGER_WEIGHT="0.5", GREEKFIRE_MODELS__AB_MIN_SAMPLES="1000",
                          **common)
        proc = self._popen("pricing", CLI + ["serve", "pricing", "--model", "registry", "--device", "cpu",
                                             "--host", "127.0.0.1", "--port", str(port)], env)
        self._wait_port("pricing", port, proc, timeout=120)
        url = f"http://127.0.0.1:{port}"
        width = len(httpx.get(f"{url}/health", timeout=10).json()["contract_features"])
        self._scrape("greekfire-pricing", "pricing", f"127.0.0.1:{port}")
        self._pricing = (url, width)

    def prometheus(self, binary: str) -> None:
        """Prometheus scraping every target each second (the pushgateway with honor_labels)."""
        jobs = []
        for job, target in sorted(self.targets.items()):
            honor = "    honor_labels: true\n" if job == "pushgateway" else ""
            jobs.append(f"  - job_name: {job}\n{honor}    static_configs:\n      - targets: ['{target}']\n")
        config = self.tmp / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n" + "".join(jobs))
        port = free_port()
        self._popen("prometheus", [binary, f"--config.file={config}", f"--storage.tsdb.path={self.tmp / 'tsdb'}",
                                  f"--web.listen-address=127.0.0.1:{port}"], command_env())
        self.prometheus_url = f"http://127.0.0.1:{port}"
        assert poll_until(lambda: httpx.get(f"{self.prometheus_url}/-/ready", timeout=2).status_code == 200, 60,
                          0.2, ignore=(httpx.HTTPError,)), self.logs["prometheus"].read_text()[-2000:]

    # -- queries ----------------------------------------------------------------------------------------
    def query(self, q: str) -> list[dict[str, Any]]:
        """Series of an instant query now (raises on a PromQL error)."""
        r = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": q}, timeout=10)
        body = r.json()
        assert body.get("status") == "success", f"{q}: {body}"
        return list(body["data"]["result"])

    def query_range(self, q: str, seconds: float, step: float = 1.0) -> list[dict[str, Any]]:
        """Series of a range query over the last ``seconds``."""
        end = time.time()
        r = httpx.get(f"{self.prometheus_url}/api/v1/query_range",
                      params={"query": q, "start": end - seconds, "end": end, "step": step}, timeout=10)
        return list(r.json()["data"]["result"])

    def all_up(self) -> bool:
        """Every job scraped successfully at least twice (so rate() has two samples)."""
        series = self.query("count_over_time(up[1m]) >= 3 and up == 1")
        return {s["metric"]["job"] for s in series} >= set(self.targets)

    def up_now(self) -> bool:
        """Every job's latest scrape succeeded. A failed scrape (a busy process past the 1 s scrape timeout)
        marks every series of its job stale: instant queries on them come back empty until the next good one."""
        series = self.query("up == 1")
        return {s["metric"]["job"] for s in series} >= set(self.targets)

    def targets_report(self) -> str:
        """Each target's health, last scrape error and duration (Prometheus's own view), and for a job that is
        not up, whether its process still runs and the end of its log."""
        r = httpx.get(f"{self.prometheus_url}/api/v1/targets", timeout=10).json()
        slowest = {s["metric"]["job"]: float(s["value"][1])
                   for s in self.query("max by (job)(max_over_time(scrape_duration_seconds[10m]))")}
        failed = {s["metric"]["job"]: int(float(s["value"][1])) for s in self.query("sum by (job)(changes(up[10m]))")}
        lines = []
        for t in r["data"]["activeTargets"]:
            job = t["labels"]["job"]
            lines.append(f"{job}: {t['health']}, last scrape {t['lastScrapeDuration']:.3f} s, slowest "
                         f"{slowest.get(job, float('nan')):.3f} s, up changed {failed.get(job, 0)} times in 10 min"
                         + (f", error {t['lastError']!r}" if t["lastError"] else ""))
            name = self.job_process.get(job)
            if t["health"] != "up" and name in self.procs:
                rc = self.procs[name].poll()
                lines.append(f"  process {name}: " + ("running" if rc is None else f"exited with {rc}"))
                lines.append("  " + self.logs[name].read_text()[-2000:].replace("\n", "\n  "))
        return "\n".join(lines)


@contextmanager
def running_stack(tmp: Path, shared_data: Path, prometheus: str, pushgateway: str) -> Iterator[Stack]:
    """Start every service (in parallel), then Prometheus, traffic, and wait until each job was scraped."""
    stack = Stack(tmp, shared_data)
    # imports in one thread first: modules imported by two threads at once can deadlock on import locks
    for module in ("lightning", "greekfire.api.auth", "greekfire.ml.tracking",
                   "greekfire.strategies.wheel.db", "greekfire.market.synth", "greekfire.ml.config",
                   "greekfire.ml.data", "greekfire.ml.module", "greekfire.training.registry", "mlflow"):
        importlib.import_module(module)
    with stack._exit:
        starters: list[Callable[[], None]] = [lambda: stack.training_and_pricing(pushgateway), stack.gpu,
                                              stack.trading, stack.wheel, stack.hft]
        t0 = time.monotonic()

        def timed(start: Callable[[], None]) -> float:
            start()
            return time.monotonic() - t0

        with ThreadPoolExecutor(len(starters)) as pool:
            stack.started_after_s = [f.result() for f in [pool.submit(timed, s) for s in starters]]
        stack.prometheus(prometheus)
        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(stack._price_traffic), pool.submit(stack._trading_traffic)]:
                f.result()
        stop = threading.Event()
        background = threading.Thread(target=stack._keep_busy, args=(stop,), daemon=True)
        background.start()
        stack._exit.callback(background.join, 10)
        stack._exit.callback(stop.set)
        assert poll_until(stack.all_up, 60, 0.5, ignore=(httpx.HTTPError,)), \
            stack.query("up") if stack.prometheus_url else "no Prometheus"
        time.sleep(2.0)  # two more scrapes after the traffic, so rates over it are not empty
        yield stack
