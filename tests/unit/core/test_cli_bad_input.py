"""Every everyday mistake with a ``greekfire`` command ends in one line on stderr naming the problem and a
non-zero exit code (2: usage, 1: bad data), never a Python traceback.

Each row runs the real command in a fresh process. A new command joins the table with its bad inputs.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from conftest import command_env

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
LOBSTER_ZIP = SHARED / "lobster" / "LOBSTER_SampleFile_AMZN_2012-06-21_1.zip"
ITCH_GZ = SHARED / "itch" / "ex20101224.TEST_ITCH_50.gz"
CLOSED = "127.0.0.1:1"  # a loopback port nothing listens on: connections are refused at once


@dataclass
class Case:
    """One bad input: ``args`` (``{tmp}`` is the test's folder), files made first, extra environment, the
    expected exit code and the words the one-line message must hold."""

    name: str
    args: list[str]
    code: int
    words: list[str]
    make: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    needs: Path | None = None


def _empty(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_bytes(b"")


def _options_csv(tmp: Path) -> None:
    pd.DataFrame({"right": ["C"], "spot": [100.0], "strike": [100.0], "ttm": [0.5], "rate": [0.01],
                  "vol": [0.2]}).to_csv(tmp / "ok.csv", index=False)


def _corrupt_parquet(tmp: Path) -> None:
    pd.DataFrame({"spot": [1.0, 2.0]}).to_parquet(tmp / "c.parquet")
    raw = (tmp / "c.parquet").read_bytes()
    (tmp / "c.parquet").write_bytes(raw[:4] + b"\x00" * 20 + raw[24:-12] + b"\x00" * 8 + raw[-4:])


def _truncated_zip(tmp: Path) -> None:
    (tmp / "t.zip").write_bytes(LOBSTER_ZIP.read_bytes()[:5000])


def _truncated_gz(tmp: Path) -> None:
    (tmp / "t.gz").write_bytes(ITCH_GZ.read_bytes()[:3000])


def _short_messages(tmp: Path) -> None:
    with zipfile.ZipFile(LOBSTER_ZIP) as zf:
        names = zf.namelist()
        msg = next(n for n in names if "_message_" in n)
        book = next(n for n in names if "_orderbook_" in n)
        (tmp / "AMZN_message_1.csv").write_bytes(b"".join(zf.read(msg).splitlines(keepends=True)[:10]))
        (tmp / "AMZN_orderbook_1.csv").write_bytes(b"".join(zf.read(book).splitlines(keepends=True)[:20]))


def _not_a_chain(tmp: Path) -> None:
    (tmp / "other.csv").write_text("a,b\n1,2\n")


def _not_a_checkpoint(tmp: Path) -> None:
    (tmp / "model.ckpt").write_text("this is not a checkpoint\n")


def _blocking_file(tmp: Path) -> None:
    (tmp / "afile").write_text("a file where a folder must go\n")


def _corrupt_partition(tmp: Path) -> None:
    part = tmp / "store" / "quotes" / "quote_date=2024-01-02"
    part.mkdir(parents=True)
    pd.DataFrame({"spot": [1.0]}).to_parquet(part / "good.parquet")
    (part / "bad.parquet").write_bytes(b"PAR1 this is not parquet")


def _quotes_without_prices(tmp: Path) -> None:
    pd.DataFrame({"quote_date": ["2024-01-02"], "underlying": ["X"], "spot": [100.0], "expiry": ["2024-02-16"],
                  "strike": [100.0], "right": ["C"]}).to_parquet(tmp / "q.parquet")


def _bad_yaml_key(tmp: Path) -> None:
    (tmp / "s.yaml").write_text("trading:\n  venus: 3\n")


CASES = [
    Case("log level", ["--log-level", "LOUD", "config", "show"], 2, ["--log-level", "LOUD", "DEBUG"]),
    Case("env section typo", ["config", "show"], 2, ["TRADNG", "trading"], env={"GREEKFIRE_TRADNG__VENUES": "3"}),
    Case("env key typo", ["config", "show"], 2, ["trading.venus", "venues"], env={"GREEKFIRE_TRADING__VENUS": "3"}),
    Case("yaml key typo", ["--config", "{tmp}/s.yaml", "config", "show"], 2, ["trading.venus", "venues"],
         make=_bad_yaml_key),
    Case("price empty csv", ["price", "{tmp}/e.csv", "-o", "{tmp}/o.csv"], 1, ["e.csv", "empty"],
         make=_empty("e.csv")),
    Case("price missing file", ["price", "{tmp}/nope.csv", "-o", "{tmp}/o.csv"], 2, ["nope.csv", "does not exist"]),
    Case("price corrupt parquet", ["price", "{tmp}/c.parquet", "-o", "{tmp}/o.csv"], 1, ["c.parquet", "Parquet"],
         make=_corrupt_parquet),
    Case("price unknown --columns preset", ["price", "{tmp}/ok.csv", "--columns", "spx2"], 2,
         ["--columns", "spx2", "spx, optopsy"], make=_options_csv),
    Case("price bad --columns field", ["price", "{tmp}/ok.csv", "--columns", "right=type,strik=strike"], 2,
         ["--columns", "strik", "right, strike, spot"], make=_options_csv),
    Case("price --columns names a column the file lacks", ["price", "{tmp}/ok.csv", "--columns", "spx"], 2,
         ["--columns", "ok.csv", "underlying_last", "right, spot, strike"], make=_options_csv),
    Case("lobster empty csv", ["market", "lobster-check", "{tmp}/m.csv", "{tmp}/b.csv"], 1, ["m.csv", "empty"],
         make=lambda tmp: (_empty("m.csv")(tmp), _empty("b.csv")(tmp))),
    Case("lobster missing file", ["market", "lobster-check", "{tmp}/nope_message_1.csv", "{tmp}/nope_orderbook_1.csv"],
         2, ["nope_message_1.csv", "does not exist"]),
    Case("lobster truncated zip", ["market", "lobster-check", "{tmp}/t.zip"], 1, ["t.zip", "zip"],
         make=_truncated_zip, needs=LOBSTER_ZIP),
    Case("lobster short message file",
         ["market", "lobster-check", "{tmp}/AMZN_message_1.csv", "{tmp}/AMZN_orderbook_1.csv"], 1,
         ["AMZN_orderbook_1.csv", "AMZN_message_1.csv", "20 rows", "10"], make=_short_messages, needs=LOBSTER_ZIP),
    Case("itch empty file", ["market", "itch", "{tmp}/e.itch"], 1, ["e.itch", "empty"], make=_empty("e.itch")),
    Case("itch missing file", ["market", "itch", "{tmp}/nope.itch"], 2, ["nope.itch", "does not exist"]),
    Case("itch truncated gz", ["market", "itch", "{tmp}/t.gz"], 1, ["t.gz", "gzip"], make=_truncated_gz,
         needs=ITCH_GZ),
    Case("spx not a vendor chain", ["data", "spx", "{tmp}/other.csv"], 1, ["other.csv"], make=_not_a_chain),
    Case("generate to s3 without credentials", ["data", "generate", "--days", "1", "--out", "s3://bucket/x"], 1,
         ["s3://bucket/x"], env={"GREEKFIRE_STORAGE__S3_ENDPOINT_URL": f"http://{CLOSED}",
                                 "GREEKFIRE_STORAGE__MAX_ATTEMPTS": "1", "AWS_ACCESS_KEY_ID": "",
                                 "AWS_SECRET_ACCESS_KEY": "", "AWS_CONFIG_FILE": "/nonexistent",
                                 "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}),
    Case("generate to an unwritable path", ["data", "generate", "--days", "1", "--out", "{tmp}/afile/x"], 1,
         ["afile"], make=_blocking_file),
    Case("serve a file that is not a checkpoint", ["serve", "pricing", "--model", "{tmp}/model.ckpt", "--device",
                                                   "cpu"], 1, ["model.ckpt", "checkpoint"], make=_not_a_checkpoint),
    Case("train on quotes without bid and ask", ["train", "pricing", "--data", "{tmp}/q.parquet"], 1,
         ["q.parquet", "bid", "ask"], make=_quotes_without_prices),
    Case("train on data that does not exist", ["train", "pricing", "--data", "{tmp}/nope"], 2,
         ["--data", "nope", "does not exist"]),
    Case("serve a folder without a checkpoint", ["serve", "pricing", "--model", "{tmp}/runs", "--device", "cpu"], 2,
         ["runs", "no checkpoint"], make=lambda tmp: (tmp / "runs" / "smoke").mkdir(parents=True)),
    Case("trade with unreachable postgres", ["trade", "--paper", "--duration", "1"], 1, ["database", "127.0.0.1"],
         env={"GREEKFIRE_DATABASE__URL": f"postgresql+psycopg://postgres@{CLOSED}/x"}),
    Case("trade venues not a number nor fix", ["trade", "--paper", "--venues", "fax"], 2, ["--venues", "fax", "fix"]),
    Case("trade over fix, no exchange", ["trade", "--paper", "--venues", "fix", "--duration", "1"], 1,
         ["FIX exchange", "127.0.0.1", "greekfire fix exchange"],
         env={"GREEKFIRE_FIX__PORT": CLOSED.split(":")[1], "GREEKFIRE_FIX__RECONNECT_S": "0.2"}),
    Case("fix conformance missing folder", ["fix", "conformance", "{tmp}/nope"], 2, ["nope", "no such folder"]),
    Case("fix exchange bad dictionary", ["fix", "exchange", "--duration", "1"], 2, ["fix.data_dictionary", "FIX44.xml"],
         env={"GREEKFIRE_FIX__DATA_DICTIONARY": "/nonexistent/FIX44.xml"}),
    Case("demo unknown stage", ["demo", "--only", "foo"], 2, ["--only", "foo", "pricing"]),
    Case("trade negative duration", ["trade", "--paper", "--duration", "-1"], 2, ["--duration", "-1", "positive"]),
    Case("data check corrupt partition", ["data", "check", "{tmp}/store"], 1, ["bad.parquet"],
         make=_corrupt_partition),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_line_and_exit_code(case: Case, tmp_path: Path) -> None:
    if case.needs is not None and not case.needs.exists():
        pytest.skip(f"real-data file {case.needs.name} is absent")
    if case.make is not None:
        case.make(tmp_path)
    env = command_env()
    env.update({"GREEKFIRE_HOME": str(tmp_path / "home"), "COLUMNS": "60"}, **case.env)
    args = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
    res = subprocess.run([sys.executable, "-m", "greekfire.cli", *args], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out
    assert res.returncode == case.code, out
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln]
    assert len(errors) == 1, res.stderr
    for word in case.words:
        assert word in errors[0], (word, errors[0])


def test_debug_log_level_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "e.itch.gz").write_bytes(gzip.compress(b"x" * 100)[:20])
    env = command_env()
    env["GREEKFIRE_HOME"] = str(tmp_path / "home")
    res = subprocess.run([sys.executable, "-m", "greekfire.cli", "--log-level", "debug", "market", "itch",
                          str(tmp_path / "e.itch.gz")], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0 and "Traceback" in res.stderr
