"""LOBSTER reader and the row-by-row book check on the real sample files."""

from __future__ import annotations

import zipfile

import pytest

from greekfire.core.errors import DataError
from greekfire.market import lobster


@pytest.fixture(scope="module")
def amzn5(shared_data):
    return lobster.read(shared_data / "lobster" / "LOBSTER_SampleFile_AMZN_2012-06-21_5.zip")


def test_amzn_level5_check_is_exact_on_levels_1_to_4(amzn5):
    assert amzn5.levels == 5 and amzn5.messages.shape[0] == 155_935 == amzn5.book.shape[0]
    res = lobster.check(amzn5)
    assert res.checked_levels == 4
    assert res.match_rate[:4] == [1.0, 1.0, 1.0, 1.0], res.mismatches[:3]
    assert res.ok and res.bad_events["bad"] == 0 and res.note == ""
    # level 5 is refilled from outside the window: not all rows can agree there
    assert res.match_rate[4] < 1.0


def test_plain_replay_drifts_which_is_why_check_resets(amzn5):
    res = lobster.replay(amzn5)
    assert res.mode == "replay" and res.match_rate[0] < 1.0 and not res.ok
    assert res.mismatches and res.mismatches[0]["row"] >= 1


@pytest.mark.parametrize("name", ["AMZN_2012-06-21_1", "AAPL_2012-06-21_1"])
def test_level1_files_report_their_level1_agreement(shared_data, name):
    data = lobster.read(shared_data / "lobster" / f"LOBSTER_SampleFile_{name}.zip")
    res = lobster.check(data)
    # nothing must match in a level-1 file: the check says so and does not pass
    assert data.levels == 1 and res.checked_levels == 0 and not res.ok
    assert res.note.startswith("nothing checked") and res.as_dict()["note"] == res.note
    assert 0.5 < res.match_rate[0] < 1.0  # a level-1 file cannot show what refills the top
    d = res.as_dict()
    assert d["match_rate_pct"][0] == round(100 * res.match_rate[0], 4)


def test_csv_pair_equals_zip_and_bad_files(shared_data, tmp_path):
    z = shared_data / "lobster" / "LOBSTER_SampleFile_AMZN_2012-06-21_1.zip"
    with zipfile.ZipFile(z) as zf:
        names = [n for n in zf.namelist() if n.endswith(".csv")]
        zf.extractall(tmp_path, names)
    msg = next(tmp_path / n for n in names if "_message_" in n)
    book = next(tmp_path / n for n in names if "_orderbook_" in n)
    a, b = lobster.read(msg, book), lobster.read(z)
    assert (a.messages == b.messages).all() and (a.book == b.book).all() and a.levels == 1
    with pytest.raises(DataError, match="levels"):
        lobster.read(msg, book, levels=2)
    bad = tmp_path / "bad_message_1.csv"
    bad.write_text("1,2,3\n")
    with pytest.raises(DataError, match="columns"):
        lobster.read(bad, book)
    with pytest.raises(DataError, match="order-book CSV"):
        lobster.read(msg)


def test_lobster_check_cli_with_nothing_to_check_fails_and_says_so(shared_data):
    from typer.testing import CliRunner

    from greekfire.cli import app

    z = shared_data / "lobster" / "LOBSTER_SampleFile_AMZN_2012-06-21_1.zip"
    res = CliRunner().invoke(app, ["market", "lobster-check", str(z), "--levels", "1", "--json"])
    assert res.exit_code == 1, res.output
    assert '"ok": false' in res.output and "nothing checked" in res.output
