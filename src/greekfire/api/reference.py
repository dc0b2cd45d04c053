"""The HTTP API reference page (docs/api-reference.md), generated from the OpenAPI schemas of our servers.

Each server (the trading API, the pricing inference server, the wheel dashboard, the GPU manager) is built
as its command builds it, on throwaway state (an in-memory database, an untrained network of the default
experiment, no GPU driver), and its ``app.openapi()`` schema is rendered as one table of operations per
server: method, path, summary, the scope a key needs where the route declares one, the parameters and the
responses. ``python -m greekfire.api.reference [PATH]`` writes the page; a test checks the committed page is
current, so the reference cannot drift from the routes. Each server also serves its live schema at
``/openapi.json`` and an explorer at ``/docs``.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI

from greekfire.api.gpu import build_app as gpu_app
from greekfire.api.pricing import build_app as pricing_app
from greekfire.api.trading import build_app as trading_app
from greekfire.api.wheel import build_wheel_app
from greekfire.core.settings import Settings, load_settings
from greekfire.gpu.cloud import CloudInfo
from greekfire.ml.config import compose_experiment
from greekfire.ml.module import PricingModule
from greekfire.ml.serving import LoadedModel
from greekfire.strategies.wheel.db import WheelDB
from greekfire.trading.build import build_engine

__all__ = ["render_reference", "server_schemas", "write_reference"]

_METHODS = ("get", "post", "put", "patch", "delete")


@contextmanager
def _apps(settings: Settings) -> Iterator[list[tuple[str, str, FastAPI]]]:
    """(command, title, app) for each server, on state that lives as long as the context."""
    with tempfile.TemporaryDirectory(prefix="greekfire-openapi-") as tmp:
        s = settings.model_copy(update={"home": Path(tmp)})
        engine = build_engine(s, store=False)
        cfg = compose_experiment("smoke", settings=s)
        module = PricingModule(cfg.model.model_dump(mode="json"), cfg.optim.model_dump(mode="json"), n_contract=4,
                               contract_names=["moneyness", "tau", "rate", "iv"])
        model = LoadedModel(module=module.eval(), contract_names=["moneyness", "tau", "rate", "iv"], seq_names=[],
                            window=0, device=torch.device("cpu"), source="untrained", runner=module)
        db = WheelDB(f"sqlite:///{Path(tmp) / 'wheel.db'}")
        try:
            yield [
                ("greekfire serve trading", "Trading API", trading_app(s, engine, run_engine=False)),
                ("greekfire serve pricing", "Pricing inference server", pricing_app(s, model)),
                ("greekfire serve wheel", "Wheel dashboard", build_wheel_app(s, db)),
                ("greekfire gpu serve", "GPU manager", gpu_app(s, cloud=CloudInfo())),
            ]
        finally:
            db.close()


def server_schemas(settings: Settings | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(command, title, OpenAPI schema) of each server."""
    with _apps(settings or load_settings()) as apps:
        return [(cmd, title, app.openapi()) for cmd, title, app in apps]


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _ref_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return f"list of {_ref_name(schema['items'])}"
    if "anyOf" in schema:
        return " or ".join(_ref_name(s) for s in schema["anyOf"])
    return str(schema.get("type", "object"))


def _operation_rows(schema: dict[str, Any]) -> list[str]:
    rows = []
    for path, item in sorted(schema.get("paths", {}).items()):
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            params = [f"`{p['name']}` ({p['in']}{', required' if p.get('required') else ''})"
                      for p in op.get("parameters", [])]
            body = op.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                params.append(f"body: {_ref_name(content.get('schema', {}))} ({media})")
            codes = ", ".join(sorted(op.get("responses", {})))
            summary = op.get("summary") or op.get("operationId", "")
            doc = (op.get("description") or "").strip().split("\n\n")[0]
            text = f"{summary}: {doc}" if doc and doc != summary else summary
            rows.append(f"| `{method.upper()}` | `{path}` | {_cell(text)} | {_cell('; '.join(params)) or '-'} | {codes} |")
    return rows


def render_reference(settings: Settings | None = None) -> str:
    """The page: one section per server with its operations and its schema names."""
    out = [
        "# HTTP API reference",
        "",
        "Generated from the OpenAPI schemas of the servers (`python -m greekfire.api.reference docs/api-reference.md`;",
        "a test checks this page is current). Each server also serves its live schema at `/openapi.json` and an",
        "interactive explorer at `/docs`. How to authenticate, rate limits and examples: [api](api.md),",
        "[wheel](wheel.md#dashboard), [gpu](gpu.md), [pricing model](pricing-model.md).",
        "",
    ]
    for cmd, title, schema in server_schemas(settings):
        out += [f"## {title}", "", f"`{cmd}` (OpenAPI {schema.get('openapi', '?')}, "
                f"\"{schema['info']['title']}\" version {schema['info']['version']})", "",
                "| method | path | what it does | parameters | responses |", "|---|---|---|---|---|"]
        out += _operation_rows(schema)
        models = sorted(schema.get("components", {}).get("schemas", {}))
        if models:
            out += ["", "Schemas: " + ", ".join(f"`{m}`" for m in models) + "."]
        out.append("")
    return "\n".join(out)


def write_reference(out: Path | None = None) -> str:
    """Render the page; write it to ``out`` when given. Returns the text."""
    text = render_reference(load_settings())
    if out is not None:
        out.write_text(text)
    return text


if __name__ == "__main__":  # python -m greekfire.api.reference [PATH]
    page = write_reference(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    if len(sys.argv) <= 1:
        print(page)
