"""The pricing inference server on loopback (uvicorn + httpx): micro-batching, Arrow, 422s, health, metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
import torch
import uvicorn

from conftest import free_port, poll_until, port_open, pricing_checkpoint
from greekfire.api.pricing import build_app
from greekfire.core.metrics import sample_value
from greekfire.core.settings import load_settings
from greekfire.ml.serving import LoadedModel, load_pricing_model


class _Server:
    def __init__(self, app, port: int) -> None:  # noqa: ANN001
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> _Server:
        self.thread.start()
        port = int(self.url.rsplit(":", 1)[1])
        assert poll_until(lambda: port_open("127.0.0.1", port), 30, 0.05), "uvicorn did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def mlp_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path = pricing_checkpoint(tmp_path_factory.mktemp("ckpt"), "smoke", ["data.n_samples=500"])
    return load_pricing_model(path, device="cpu")


@pytest.fixture(scope="module")
def mlp_server(mlp_model: LoadedModel) -> Iterator[_Server]:
    settings = load_settings(overrides={"training.serve_max_wait_ms": 20.0})
    with _Server(build_app(settings, mlp_model), free_port()) as srv:
        yield srv


def _rows(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    u = torch.rand(n, 4, generator=g)
    return torch.stack([0.5 + u[:, 0], 0.2 + 0.9 * u[:, 1], 0.02 + 0.08 * u[:, 2], 0.05 + 0.9 * u[:, 3]], 1)


def test_micro_batched_answers_equal_direct_model_output(mlp_server: _Server, mlp_model: LoadedModel) -> None:
    rows = _rows(48)
    direct = mlp_model(rows)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=mlp_server.url, timeout=30) as c:
            return await asyncio.gather(*(c.post("/v1/price", json={"contract": rows[i : i + 3].tolist()})
                                          for i in range(0, 48, 3)))

    before = httpx.get(f"{mlp_server.url}/health").json()["batching"]
    answers = asyncio.run(fire())
    after = httpx.get(f"{mlp_server.url}/health").json()["batching"]
    assert all(a.status_code == 200 for a in answers)
    got = torch.tensor(sum((a.json()["price"] for a in answers), []))
    torch.testing.assert_close(got, direct, rtol=1e-5, atol=1e-6)
    assert after["rows"] - before["rows"] == 48
    assert after["batches"] - before["batches"] < 16  # 16 concurrent requests shared forward passes


def test_named_rows_and_arrow_ipc(mlp_server: _Server, mlp_model: LoadedModel) -> None:
    rows = _rows(5)
    direct = mlp_model(rows)
    named = [dict(zip(mlp_model.contract_names, r, strict=True)) for r in rows.tolist()]
    r = httpx.post(f"{mlp_server.url}/v1/price", json={"rows": named})
    assert r.status_code == 200 and r.json()["unit"] == "price/strike"
    torch.testing.assert_close(torch.tensor(r.json()["price"]), direct, rtol=1e-5, atol=1e-6)
    table = pa.table({n: rows[:, i].numpy() for i, n in enumerate(mlp_model.contract_names)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    r = httpx.post(f"{mlp_server.url}/v1/price", content=sink.getvalue().to_pybytes(),
                   headers={"content-type": "application/vnd.apache.arrow.stream"})
    assert r.status_code == 200, r.text
    torch.testing.assert_close(torch.tensor(r.json()["price"]), direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"contract": [[1.0, 0.5, 0.03]]}, "contract"),
        ({"contract": [[1.0, 0.5, 0.03, "high"]]}, "contract"),
        ({"contract": [[1.0, 0.5, 0.03, 0.2]], "strike": [100]}, "strike"),
        ({"rows": [{"moneyness": 1.0, "ttm": 0.5, "rate": 0.03}]}, "vol"),
        ('{"contract": [[1.0, 0.5, 0.03, 0.2], [1.0, 0.5, 0.03, NaN]]}', "contract.1.vol"),
        # the rules `greekfire price` marks a bad row by: no negative vol or time to expiry, no `true` as a number
        ({"contract": [[1.0, 0.5, 0.03, 0.2], [1.0, 0.5, 0.03, -0.2]]}, "contract.1.vol"),
        ({"contract": [[1.0, -0.5, 0.03, 0.2]]}, "contract.0.ttm"),
        ({"contract": [[1.0, 0.5, 0.03, True]]}, "contract.0.3"),
        ({"rows": [{"moneyness": 1.0, "ttm": 0.5, "rate": 0.03, "vol": True}]}, "rows.0.vol"),
    ],
)
def test_bad_requests_get_422_naming_the_field(mlp_server: _Server, body: dict | str, field: str) -> None:
    if isinstance(body, str):  # JSON that Python's encoder will not write (NaN)
        r = httpx.post(f"{mlp_server.url}/v1/price", content=body, headers={"content-type": "application/json"})
    else:
        r = httpx.post(f"{mlp_server.url}/v1/price", json=body)
    assert r.status_code == 422
    locs = [".".join(str(p) for p in d["loc"]) for d in r.json()["detail"]]
    assert any(field in loc for loc in locs), r.json()


def test_health_and_metrics(mlp_server: _Server) -> None:
    h = httpx.get(f"{mlp_server.url}/health")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["kind"] == "mlp"
    httpx.post(f"{mlp_server.url}/v1/price", json={"contract": _rows(2).tolist()})
    m = httpx.get(f"{mlp_server.url}/metrics")
    assert m.status_code == 200
    assert "greekfire_inference_rows_total" in m.text and "greekfire_inference_batch_rows_bucket" in m.text


def test_a_failing_forward_pass_counts_as_an_error(mlp_model: LoadedModel) -> None:
    def broken(*_: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("device lost")

    app = build_app(load_settings(), dataclasses.replace(mlp_model, runner=broken))
    before = sample_value("greekfire_inference_requests_total", {"status": "error"}) or 0.0

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://pricing") as c:
            r = await c.post("/v1/price", json={"contract": _rows(2).tolist()})
            await app.state.batcher.close()
            return r

    assert asyncio.run(go()).status_code == 500
    assert sample_value("greekfire_inference_requests_total", {"status": "error"}) == before + 1


def test_lstm_model_needs_its_history_window(tmp_path: Path) -> None:
    model = load_pricing_model(pricing_checkpoint(tmp_path, "lstm_tiny", ["data.n_samples=300"]), device="cpu")
    seq, contract = torch.randn(4, 8, 3), torch.randn(4, 3)
    direct = model(contract, seq)
    app = build_app(load_settings(), model)

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pricing") as c:
            ok = await c.post("/v1/price", json={"contract": contract.tolist(), "seq": seq.tolist()})
            bad = await c.post("/v1/price", json={"contract": contract.tolist()})
            await app.state.batcher.close()
            return ok, bad

    ok, bad = asyncio.run(go())
    assert ok.status_code == 200
    torch.testing.assert_close(torch.tensor(ok.json()["price"]), direct, rtol=1e-5, atol=1e-6)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "seq"]
