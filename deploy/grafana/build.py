"""Greekfire's Grafana dashboards as code (grafana-foundation-sdk).

``python deploy/grafana/build.py`` writes one JSON file per dashboard into deploy/grafana/dashboards/, which
Grafana loads through deploy/grafana/provisioning/dashboards/greekfire.yaml. Every query uses a metric name
that greekfire exports (the GPU board uses NVIDIA dcgm-exporter's DCGM_FI_DEV_* names, which the GPU manager
exports too, so the same board shows dcgm-exporter's data). The integration test
tests/integration/test_observability_promql.py evaluates every query against a Prometheus scraping our
services; tests/unit/test_grafana_dashboards.py checks the committed JSON equals a fresh build.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.builders import prometheus as prometheus_b
from grafana_foundation_sdk.builders import timeseries as timeseries_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dashboard_m

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DATASOURCE = dashboard_m.DataSourceRef(type_val="prometheus", uid="prometheus")  # provisioned with this uid


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel and its legend template."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A time-series panel: title, unit (Grafana's unit id) and its queries."""

    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""


@dataclass(frozen=True)
class Board:
    """A dashboard: file name (``<name>.json``), uid, title and panels (laid out two a row)."""

    name: str
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _p(title: str, unit: str, *queries: tuple[str, str] | str, description: str = "") -> Panel:
    qs = tuple(Query(q) if isinstance(q, str) else Query(*q) for q in queries)
    return Panel(title, unit, qs, description)


GPU = Board("gpu", "greekfire-gpu", "Greekfire / GPU",
            "GPU manager (`greekfire gpu serve`) or NVIDIA dcgm-exporter: the same DCGM_FI_DEV_* series.", (
    _p("GPU utilization", "percent", ("DCGM_FI_DEV_GPU_UTIL", "GPU {{gpu}}")),
    _p("Memory copy utilization", "percent", ("DCGM_FI_DEV_MEM_COPY_UTIL", "GPU {{gpu}}")),
    _p("Framebuffer used", "percent",
       ("100 * DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)", "GPU {{gpu}}")),
    _p("Framebuffer used and free", "decmbytes", ("DCGM_FI_DEV_FB_USED", "used {{gpu}}"),
       ("DCGM_FI_DEV_FB_FREE", "free {{gpu}}")),
    _p("Temperature", "celsius", ("DCGM_FI_DEV_GPU_TEMP", "GPU {{gpu}}")),
    _p("Power draw", "watt", ("DCGM_FI_DEV_POWER_USAGE", "GPU {{gpu}}")),
    _p("Clocks", "rotmhz", ("DCGM_FI_DEV_SM_CLOCK", "SM {{gpu}}"), ("DCGM_FI_DEV_MEM_CLOCK", "memory {{gpu}}")),
    _p("Last XID and ECC errors", "short", ("DCGM_FI_DEV_XID_ERRORS", "last XID {{gpu}}"),
       ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "single-bit {{gpu}}"),
       ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "double-bit {{gpu}}")),
    _p("Healthy (may be placed on)", "bool", ("greekfire_gpu_healthy", "GPU {{gpu}}")),
    _p("Thresholds crossed", "short", ("greekfire_gpu_alert_active", "{{alert}} GPU {{gpu}}")),
    _p("torch memory", "bytes", ("greekfire_torch_allocated_bytes", "allocated {{gpu}}"),
       ("greekfire_torch_reserved_bytes", "reserved {{gpu}}")),
    _p("torch allocator fragmentation", "percentunit", ("greekfire_torch_fragmentation_ratio", "GPU {{gpu}}")),
    _p("Devices known to the manager", "short", ("greekfire_gpu_devices", "{{kind}}")),
    _p("Monitor samples", "ops", ("rate(greekfire_gpu_monitor_samples_total[1m])", "samples/s")),
))

PRICING = Board("pricing", "greekfire-pricing", "Greekfire / Pricing inference server",
                "`greekfire serve pricing`: requests, latency, micro-batches and the model's forward passes.", (
    _p("Requests by outcome", "reqps",
       ("sum by (status) (rate(greekfire_inference_requests_total[1m]))", "{{status}}")),
    _p("Request latency", "s",
       ("histogram_quantile(0.5, sum by (le) (rate(greekfire_inference_request_seconds_bucket[1m])))", "p50"),
       ("histogram_quantile(0.99, sum by (le) (rate(greekfire_inference_request_seconds_bucket[1m])))", "p99")),
    _p("Rows priced", "rowsps", ("rate(greekfire_inference_rows_total[1m])", "rows/s")),
    _p("Rows per forward pass", "short",
       ("histogram_quantile(0.5, sum by (le) (rate(greekfire_inference_batch_rows_bucket[1m])))", "p50"),
       ("histogram_quantile(0.99, sum by (le) (rate(greekfire_inference_batch_rows_bucket[1m])))", "p99")),
    _p("Forward pass", "s",
       ("histogram_quantile(0.99, sum by (le) (rate(greekfire_inference_forward_seconds_bucket[1m])))", "p99"),
       ("rate(greekfire_inference_forward_seconds_sum[1m]) / rate(greekfire_inference_forward_seconds_count[1m])",
        "mean")),
    _p("Server memory", "bytes", ('process_resident_memory_bytes{job="greekfire-pricing"}', "resident")),
))

TRADING = Board("trading", "greekfire-trading", "Greekfire / Trading engine and API",
                "`greekfire serve trading`: orders, fills, risk denials by reason, latency, P&L, Greeks, the "
                "kill switch and the API.", (
    _p("Trading state (0 active, 1 reducing, 2 halted: kill switch)", "short", ("greekfire_trading_state", "{{job}} {{instance}}")),
    _p("Order transitions", "ops", ("sum by (status) (rate(greekfire_trading_orders_total[1m]))", "{{status}}")),
    _p("Fills", "ops", ("sum by (venue, liquidity) (rate(greekfire_trading_fills_total[1m]))",
                        "{{venue}} {{liquidity}}")),
    _p("Risk denials by reason", "short",
       ("sum by (reason) (increase(greekfire_trading_risk_denials_total[5m]))", "{{reason}}")),
    _p("Internal latency (market event to order out)", "µs",
       ("greekfire_trading_internal_latency_us", "{{quantile}}")),
    _p("Venue latency (EWMA)", "µs", ("greekfire_trading_venue_latency_us", "{{venue}} {{kind}}")),
    _p("P&L", "currencyUSD", ("greekfire_trading_pnl", "{{kind}}")),
    _p("Greeks", "short", ("greekfire_trading_greek", "{{underlying}} {{greek}}")),
    _p("1-day VaR", "currencyUSD", ("greekfire_trading_var", "{{method}}")),
    _p("Routing", "ops", ("sum by (venue) (rate(greekfire_trading_routed_orders_total[1m]))", "{{venue}}")),
    _p("API answers by status", "reqps",
       ("sum by (status) (rate(greekfire_api_trading_requests_total[1m]))", "{{status}}")),
    _p("API answers by route", "reqps",
       ("sum by (route) (rate(greekfire_api_trading_requests_total[1m]))", "{{route}}")),
    _p("WebSocket clients", "short", ("greekfire_api_ws_clients", "{{job}} {{instance}}")),
))

FIX = Board("fix", "greekfire-fix", "Greekfire / FIX sessions",
            "FIX 4.4 sessions of the engine's FIX venue and of `greekfire fix exchange`.", (
    _p("Logged on", "bool", ("greekfire_fix_session_logged_on", "{{session}}")),
    _p("Messages", "ops", ('sum by (session, event) (rate(greekfire_fix_session_events_total'
                           '{event=~"sent|received"}[1m]))', "{{session}} {{event}}")),
    _p("Sequence gaps (ResendRequests sent)", "short",
       ('increase(greekfire_fix_session_events_total{event="gaps"}[5m])', "{{session}}")),
    _p("Rejected, garbled and resent", "short",
       ('increase(greekfire_fix_session_events_total{event=~"rejected|garbled|resent"}[5m])',
        "{{session}} {{event}}")),
    _p("Logons", "short", ("increase(greekfire_fix_logons_total[1h])", "{{session}}")),
))

WHEEL = Board("wheel", "greekfire-wheel", "Greekfire / Wheel",
              "The wheel's book as `greekfire serve wheel` reads it, and the paper run's cycles and denials "
              "(`greekfire wheel run --paper --metrics-port`).", (
    _p("State per underlying", "short", ('greekfire_wheel_state == 1', "{{symbol}} {{state}}")),
    _p("Positions", "short", ("greekfire_wheel_positions", "{{symbol}} {{right}}")),
    _p("Equity", "currencyUSD", ("greekfire_wheel_equity", "{{job}} {{instance}}")),
    _p("Drawdown from peak", "percentunit", ("greekfire_wheel_drawdown", "{{job}} {{instance}}")),
    _p("P&L", "currencyUSD", ("greekfire_wheel_pnl", "{{kind}}")),
    _p("Premium collected", "currencyUSD", ("greekfire_wheel_premium_collected", "{{symbol}}")),
    _p("Days to next expiry", "d",
       ("(greekfire_wheel_next_expiry_timestamp_seconds - time()) / 86400", "{{symbol}}")),
    _p("Days since the last snapshot", "d",
       ("(time() - (greekfire_wheel_last_snapshot_timestamp_seconds > 0)) / 86400", "{{job}} {{instance}}"),
       description="A process that has read no snapshot exports 0 and is left out."),
    _p("Cycles of the paper run", "short", ("increase(greekfire_wheel_cycles_total[5m])", "{{job}} {{instance}}")),
    _p("Orders denied by risk, by reason", "short",
       ("sum by (reason) (increase(greekfire_wheel_denials_total[1h]))", "{{reason}}"),
       description="Every risk reason code has a series from the run's start (0 until a denial)."),
))

HFT = Board("hft", "greekfire-hft", "Greekfire / HFT pipeline",
            "`greekfire hft run` / `hft replay` with hft.metrics_port: latency per stage, throughput, rings.", (
    _p("Stage latency p50", "µs", ('greekfire_hft_stage_latency_us{quantile="p50"}', "{{stage}}")),
    _p("Stage latency p99", "µs", ('greekfire_hft_stage_latency_us{quantile="p99"}', "{{stage}}")),
    _p("Stage latency p99.9", "µs", ('greekfire_hft_stage_latency_us{quantile="p99.9"}', "{{stage}}")),
    _p("Records handled per stage", "ops", ("sum by (stage) (rate(greekfire_hft_messages_total[1m]))", "{{stage}}")),
    _p("Ring fill", "percentunit", ("greekfire_hft_ring_fill", "{{ring}}")),
    _p("CPU per stage", "percentunit", ("deriv(greekfire_hft_cpu_seconds[1m])", "{{stage}}")),
    _p("Memory per stage", "bytes", ("greekfire_hft_rss_bytes", "{{stage}}")),
))

TRAINING = Board("training", "greekfire-training", "Greekfire / Training and registry",
                 "Training runs push their end to the pushgateway (job greekfire_training, label run); "
                 "the registry's champion and challenger are compared by the A/B inference server.", (
    _p("Last run outcome (1 ok, 0 failed)", "bool", ("greekfire_training_run_success", "{{run}}")),
    _p("Run duration", "s", ("greekfire_training_run_duration_seconds", "{{run}}")),
    _p("Optimizer steps per run", "short", ("greekfire_training_run_steps", "{{run}}")),
    _p("Held-out scores", "short", ("greekfire_training_run_score", "{{run}} {{metric}}")),
    _p("Trainer peak memory", "bytes", ("greekfire_training_run_max_rss_bytes", "{{run}}"),
       ("greekfire_training_run_gpu_peak_bytes", "GPU {{run}}")),
    _p("Hours since a run last succeeded", "h",
       ("(time() - max(greekfire_training_run_last_success_timestamp_seconds)) / 3600", "hours")),
    _p("Since the last push", "s", ('time() - push_time_seconds{job="greekfire_training"}', "{{run}}")),
    _p("Live training loss", "short", ("greekfire_training_loss", "{{run}}")),
    _p("Live steps", "ops", ("rate(greekfire_training_steps_total[1m])", "{{run}}")),
    _p("A/B mean squared error (registry champion vs challenger)", "short",
       ("greekfire_ab_mean_squared_error", "{{variant}}")),
    _p("A/B requests", "reqps", ("sum by (variant) (rate(greekfire_ab_requests_total[1m]))", "{{variant}}")),
))

BOARDS: tuple[Board, ...] = (GPU, PRICING, TRADING, FIX, WHEEL, HFT, TRAINING)


def _panel(p: Panel) -> timeseries_b.Panel:
    panel = (timeseries_b.Panel().title(p.title).unit(p.unit).datasource(DATASOURCE).span(12).height(8)
             .legend(common_b.VizLegendOptions().show_legend(True).display_mode(common_m.LegendDisplayMode.LIST)
                     .placement(common_m.LegendPlacement.BOTTOM)))
    if p.description:
        panel = panel.description(p.description)
    for i, q in enumerate(p.queries):
        panel = panel.with_target(prometheus_b.Dataquery().expr(q.expr).legend_format(q.legend or "__auto")
                                  .ref_id(chr(ord("A") + i)).datasource(DATASOURCE).range())
    return panel


def build(board: Board) -> dashboard_m.Dashboard:
    """The Grafana dashboard model of ``board``."""
    d = (dashboard_b.Dashboard(board.title).uid(board.uid).description(board.description)
         .tags(["greekfire", board.name]).refresh("30s").time("now-6h", "now").timezone("browser").editable())
    for p in board.panels:
        d = d.with_panel(_panel(p))
    return d.build()


def render(board: Board) -> str:
    """The dashboard JSON as written to ``dashboards/<name>.json`` (sorted keys, 2-space indent, newline)."""
    return json.dumps(json.loads(JSONEncoder().encode(build(board))), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    """Write every dashboard into ``dashboards/``; returns the exit status."""
    OUT.mkdir(parents=True, exist_ok=True)
    for board in BOARDS:
        (OUT / f"{board.name}.json").write_text(render(board))
        print(f"{OUT.name}/{board.name}.json: {len(board.panels)} panels")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
