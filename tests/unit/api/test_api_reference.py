"""docs/api-reference.md is generated from the servers' OpenAPI schemas and must be current."""

from __future__ import annotations

from pathlib import Path

from greekfire.api.reference import render_reference, server_schemas

PAGE = Path(__file__).resolve().parents[3] / "docs" / "api-reference.md"


def test_the_committed_reference_is_current() -> None:
    fresh = render_reference()
    assert PAGE.read_text() == fresh, "regenerate: python -m greekfire.api.reference docs/api-reference.md"


def test_every_route_of_every_server_is_in_the_reference() -> None:
    page = PAGE.read_text()
    titles = []
    for _cmd, title, schema in server_schemas():
        titles.append(title)
        for path, item in schema["paths"].items():
            for method in item:
                assert f"| `{method.upper()}` | `{path}` |" in page, (title, method, path)
    assert titles == ["Trading API", "Pricing inference server", "Wheel dashboard", "GPU manager"]
    assert "| `POST` | `/v1/orders` |" in page and "| `POST` | `/v1/price` |" in page
