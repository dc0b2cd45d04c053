"""deploy/logging/vector.yaml against what greekfire really writes. Vector itself is not installable from the
package registries these machines reach (PyPI, Debian), so `vector validate` is not run here: this checks the
configuration's structure (every input names a component, a Loki sink with JSON lines and a few fixed labels)
and that the fields it reads are there in the JSON lines `configure_logging` writes to `logging.file`,
rotated files included."""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from greekfire.core.logging import configure_logging, trace_context

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "deploy" / "logging" / "vector.yaml"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in saved:
            root.removeHandler(h)
            h.close()
    for h in saved:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


def _remap(config: dict[str, Any]) -> str:
    return str(config["transforms"]["greekfire_json"]["source"])


def test_the_pipeline_is_wired_from_files_through_json_to_loki(config: dict[str, Any]) -> None:
    components = {**config["sources"], **config.get("transforms", {}), **config["sinks"]}
    for name, comp in {**config.get("transforms", {}), **config["sinks"]}.items():
        assert comp["inputs"], name
        assert all(i in components for i in comp["inputs"]), (name, comp["inputs"])
    assert config["sources"]["greekfire_files"]["type"] == "file"
    remap = config["transforms"]["greekfire_json"]
    assert remap["type"] == "remap" and remap["drop_on_error"] is True and "parse_json!" in remap["source"]
    loki = config["sinks"]["loki"]
    assert loki["type"] == "loki" and loki["inputs"] == ["greekfire_json"] and loki["encoding"]["codec"] == "json"
    assert loki["endpoint"].startswith("${LOKI_ENDPOINT")
    # labels stay few and low-cardinality: never a per-request field
    assert set(loki["labels"]) == {"app", "service", "level", "host"}
    assert not any("trace_id" in str(v) or "client_id" in str(v) for v in loki["labels"].values())


def test_the_fields_it_reads_are_in_the_lines_greekfire_writes(
    config: dict[str, Any], tmp_path: Path, restore_logging: None,
) -> None:
    log_file = tmp_path / "trading.log"
    configure_logging("INFO", json_format=True, file=log_file, max_bytes=400, backup_count=10, stream=io.StringIO())
    log = logging.getLogger("greekfire.api.trading")
    with trace_context("req-1"):
        for i in range(6):  # enough to rotate the 400-byte file
            log.info("POST /v1/orders: paper.1.%d buy 1 GFX", i, extra={"client_id": f"paper.1.{i}"})
    log.warning("no trace here")
    files = sorted(p.name for p in tmp_path.glob("trading.log*"))
    assert "trading.log.1" in files  # rotated

    # the file source's patterns pick up the live and the rotated files
    patterns = [Path(p.split("}/", 1)[1]).name for p in config["sources"]["greekfire_files"]["include"]]
    for name in files:
        assert any(fnmatch.fnmatch(name, pat) for pat in patterns), name

    # the remap names the service after the file: the same pattern applied here
    remap = _remap(config)
    strip_dir, strip_log = re.findall(r"r'([^']*)'", remap)
    for name in files:
        assert re.sub(strip_log, "", re.sub(strip_dir, "", f"/var/log/greekfire/{name}")) == "trading"

    # every field the remap and the labels read is in every line; the trace id rides in the line
    read = set(re.findall(r"\.(ts|level|logger|msg|trace_id)\b", remap))
    read |= {m for v in config["sinks"]["loki"]["labels"].values() for m in re.findall(r"{{\s*(\w+)\s*}}", str(v))}
    read -= {"service"}  # set by the remap itself
    assert read >= {"ts", "level"}
    lines = [json.loads(line) for p in tmp_path.glob("trading.log*") for line in p.read_text().splitlines()]
    assert len(lines) == 7
    for rec in lines:
        assert read <= rec.keys(), rec
    traced = [r for r in lines if r.get("trace_id") == "req-1"]
    assert len(traced) == 6 and all(r["client_id"].startswith("paper.1.") for r in traced)
    assert [r for r in lines if "trace_id" not in r][0]["msg"] == "no trace here"
