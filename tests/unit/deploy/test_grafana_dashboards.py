"""The Grafana dashboards under deploy/grafana/: the committed JSON is exactly what deploy/grafana/build.py
builds (so the code and the JSON cannot drift), each dashboard has a unique uid and queries on every panel, and
the provisioning files point Grafana at them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import yaml

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "deploy" / "grafana"


def _build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_build", GRAFANA / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_committed_json_equals_a_fresh_build() -> None:
    build = _build()
    committed = {p.stem for p in (GRAFANA / "dashboards").glob("*.json")}
    assert committed == {b.name for b in build.BOARDS}, "run `python deploy/grafana/build.py`"
    for board in build.BOARDS:
        path = GRAFANA / "dashboards" / f"{board.name}.json"
        assert path.read_text() == build.render(board), f"{path.name} is stale: run `python deploy/grafana/build.py`"


def test_dashboards_have_unique_uids_and_queries_on_every_panel() -> None:
    uids = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        uids.append(board["uid"])
        assert board["panels"], path.name
        for panel in board["panels"]:
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), (path.name, panel["title"])
            assert all(t["datasource"]["uid"] == "prometheus" for t in panel["targets"])
    assert len(uids) == len(set(uids)) == 7


def test_the_gpu_board_uses_dcgm_exporter_names() -> None:
    board = json.loads((GRAFANA / "dashboards" / "gpu.json").read_text())
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
                 "DCGM_FI_DEV_XID_ERRORS"):
        assert name in exprs


def test_provisioning_names_the_datasource_the_dashboards_use() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert [d["uid"] for d in ds["datasources"]] == ["prometheus"]
    assert ds["datasources"][0]["type"] == "prometheus"
    dash = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "greekfire.yaml").read_text())
    (provider,) = dash["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
