"""Every setting is documented on the page of the system that owns it: its dotted key, its default and its
environment variable, in one table row, as the settings models define them today."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from docs_blocks import ROOT
from pydantic.fields import FieldInfo

from greekfire.core.settings import Settings
from greekfire.core.settings_doc import env_var, leaves, shown_default

# which page documents which top-level section
OWNER = {
    "home": "docs/core.md",
    "logging": "docs/core.md",
    "metrics": "docs/core.md",
    "database": "docs/core.md",
    "api": "docs/core.md",
    "storage": "docs/data.md",
    "gpu": "docs/gpu.md",
    "quant": "docs/quant.md",
    "market": "docs/market.md",
    "trading": "docs/trading.md",
    "fix": "docs/fix.md",
    "training": "docs/pricing-model.md",
    "hft": "docs/hft.md",
    "models": "docs/training.md",
    "wheel": "docs/wheel.md",
}


LEAVES = leaves(Settings)


def test_every_section_has_an_owning_page() -> None:
    assert {path[0] for path, _ in LEAVES} == set(OWNER)


@pytest.mark.parametrize("path,info", LEAVES, ids=[".".join(p) for p, _ in LEAVES])
def test_setting_is_documented_with_default_and_env_var(path: tuple[str, ...], info: FieldInfo) -> None:
    page = OWNER[path[0]]
    text = (ROOT / page).read_text()
    dotted = ".".join(path)
    # a settings row names the key first and its variable (module tables may start with a dotted name too)
    rows = [ln for ln in text.splitlines() if ln.startswith(f"| `{dotted}` |") and "`GREEKFIRE_" in ln]
    assert len(rows) == 1, f"{page}: expected one settings-table row for `{dotted}`, found {len(rows)}"
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    env = env_var(path)
    assert f"`{env}`" in cells, f"{page}: the row of `{dotted}` does not name {env} in a cell of its own"
    default = shown_default(info.default)
    assert f"`{default}`" in cells, f"{page}: the row of `{dotted}` does not give the default `{default}`: {rows[0]}"


def test_documented_rows_name_real_settings() -> None:
    """A settings row on a page names a key that exists (a renamed key must not linger in the docs)."""
    known = {".".join(p) for p, _ in LEAVES}
    stale = []
    for page in set(OWNER.values()):
        for ln in (ROOT / page).read_text().splitlines():
            m = re.match(r"^\| `([a-z_][a-z0-9_.]*)` \|", ln)
            if m and "`GREEKFIRE_" in ln and m.group(1) not in known:
                stale.append(f"{page}: {m.group(1)}")
    assert not stale, f"documented settings that do not exist: {stale}"


def test_env_var_names_really_set_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented variable scheme works, including a nested section and an aliased key."""
    from greekfire.core.settings import load_settings

    monkeypatch.setenv("GREEKFIRE_TRADING__RISK__MAX_ORDER_QTY", "17")
    monkeypatch.setenv("GREEKFIRE_LOGGING__JSON", "true")
    monkeypatch.setenv("GREEKFIRE_HOME", str(tmp_path))
    s = load_settings()
    assert (s.trading.risk.max_order_qty, s.logging.json_format, s.home) == (17, True, tmp_path)
