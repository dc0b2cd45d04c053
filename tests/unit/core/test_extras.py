"""The lean base install: what the core imports is declared in the base dependencies, training and the
HTTP servers need their extras, and a missing extra ends in one message naming it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import pytest

from greekfire.core.errors import GreekfireError
from greekfire.core.extras import EXTRAS, MissingExtraError, missing_modules, require_extra

ROOT = Path(__file__).resolve().parents[3]
SRC = ROOT / "src" / "greekfire"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# parts of the package that need an extra, and which
NEEDS = {"ml": "train", "training": "train", "api": "serve"}


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def _closure(reqs: list[str]) -> set[str]:
    """Distributions the requirements bring, following each one's own (unconditional) requirements."""
    seen: set[str] = set()
    todo = [_name(r) for r in reqs]
    while todo:
        name = todo.pop()
        if name in seen or name == "greekfire":
            continue
        seen.add(name)
        try:
            deps = requires(name) or []
        except PackageNotFoundError:
            continue
        todo += [_name(d) for d in deps if "extra ==" not in d]
    return seen


def _third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return {m for m in out if m != "greekfire" and m not in sys.stdlib_module_names}


# imports inside a function that only a server runs (the function's own import, so the module itself
# loads without the extra): which extra they need
LAZY_FOR_SERVERS = {("cli.py", "uvicorn"): "serve", ("core/metrics.py", "starlette"): "serve"}
# imports inside a function that only gs:// URLs run: the cloud extra's (gcsfs brings google-auth)
LAZY_FOR_CLOUD = {("data/storage.py", "gcsfs"): "cloud", ("data/storage.py", "google"): "cloud"}
# optional at run time by design: vendor GPU libraries and other frameworks' allocators, probed with a guard
OPTIONAL = {"amdsmi", "cupy", "tensorflow"}


def test_every_import_is_declared_where_the_code_lives() -> None:
    dists = {m: {d.lower().replace("_", "-") for d in ds} for m, ds in packages_distributions().items()}
    base = _closure(PROJECT["dependencies"])
    extras = {k: _closure(v) for k, v in PROJECT["optional-dependencies"].items()}
    undeclared = []
    for path in sorted(SRC.rglob("*.py")):
        part = path.relative_to(SRC).parts[0]
        allowed = base | (extras[NEEDS[part]] if part in NEEDS else set())
        if part == "api":  # the pricing server loads the pricing model
            allowed |= extras["train"]
        rel = str(path.relative_to(SRC))
        for mod in _third_party_imports(path) - OPTIONAL:
            extra = LAZY_FOR_SERVERS.get((rel, mod)) or LAZY_FOR_CLOUD.get((rel, mod))
            if not dists.get(mod, set()) & (allowed | (extras[extra] if extra else set())):
                undeclared.append(f"{path.relative_to(ROOT)}: {mod}")
    assert not undeclared, f"imports not declared for that part of the package: {undeclared}"


def test_declared_base_dependencies_are_imported() -> None:
    """A base dependency nobody imports makes `pip install greekfire` heavier for nothing."""
    dists = packages_distributions()
    imported = set()
    for path in SRC.rglob("*.py"):
        for mod in _third_party_imports(path):
            imported |= {d.lower().replace("_", "-") for d in dists.get(mod, [])}
    # used without an import statement: fsspec loads s3fs for s3:// URLs, SQLAlchemy loads psycopg for
    # postgresql+psycopg:// URLs
    by_url = {"s3fs", "psycopg"}
    unused = [r for r in PROJECT["dependencies"] if _name(r) not in imported | by_url]
    assert not unused, f"base dependencies never imported: {unused}"


def test_the_dev_extra_brings_train_and_serve() -> None:
    assert any(_name(r) == "greekfire" and "train" in r and "serve" in r for r in PROJECT["optional-dependencies"]["dev"])


def test_the_core_command_line_loads_no_extra() -> None:
    code = ("import sys, greekfire.cli, greekfire.data.pricing, greekfire.strategies.paper; "
            f"print(sorted(m for m in {sorted(m for ms in EXTRAS.values() for m in ms)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_missing_extra_names_itself_and_how_to_install_it() -> None:
    exc = MissingExtraError("train", ["lightning"], "greekfire.ml (training)")
    assert isinstance(exc, GreekfireError) and isinstance(exc, ImportError)
    assert str(exc) == ("greekfire.ml (training) needs the 'train' extra (missing: lightning): "
                        "pip install 'greekfire[train]'")
    assert "\n" not in str(exc)


def test_installed_extras_pass_and_an_unknown_extra_is_refused() -> None:
    for extra in EXTRAS:  # the test environment installs dev, which brings every extra
        assert missing_modules(extra) == []
        require_extra(extra, "a test")
    with pytest.raises(ValueError, match=r"unknown extra 'gpu': allowed \['cloud', 'serve', 'train'\]"):
        missing_modules("gpu")
