"""`greekfire api-key create|list|revoke` as a user runs them: the key is printed once and never again, the
list shows no secret, a revoked key is marked, and mistakes get one line and an exit code."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from conftest import command_env

CLI = [sys.executable, "-c", "from greekfire.cli import app; app()"]


def _run(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CLI + args, env=command_env(GREEKFIRE_HOME=str(home)), capture_output=True, text=True,
                          timeout=120)


def test_create_list_revoke(tmp_path: Path) -> None:
    created = _run(["api-key", "create", "--name", "desk-1", "--scope", "trade", "--json"], tmp_path)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["api_key"].startswith(f"gfk_{key['key_id']}_") and key["scopes"] == ["trade"]

    listed = _run(["api-key", "list", "--json"], tmp_path)
    rows = json.loads(listed.stdout)
    assert [(r["key_id"], r["name"], r["revoked_at"]) for r in rows] == [(key["key_id"], "desk-1", None)]
    assert key["api_key"] not in listed.stdout + listed.stderr

    revoked = _run(["api-key", "revoke", key["key_id"]], tmp_path)
    assert revoked.returncode == 0 and f"revoked {key['key_id']}" in revoked.stdout
    again = _run(["api-key", "revoke", key["key_id"]], tmp_path)
    assert again.returncode == 1 and "no such active key" in again.stdout
    rows = json.loads(_run(["api-key", "list", "--json"], tmp_path).stdout)
    assert rows[0]["revoked_at"] is not None


def test_an_earlier_versions_id_that_begins_with_a_dash_is_revoked_after_double_dash(tmp_path: Path) -> None:
    """Ids made before they were letters and digits only could begin with `-`; such a key is still listed
    and revoked (`api-key revoke -- -id`), and a new key's id never begins with `-`."""
    created = _run(["api-key", "create", "--name", "old", "--scope", "read", "--json"], tmp_path)
    assert created.returncode == 0, created.stderr
    new_id = json.loads(created.stdout)["key_id"]
    assert new_id.isalnum()
    old_id = "-" + new_id[1:]
    (db,) = tmp_path.rglob("*.db")
    with closing(sqlite3.connect(db)) as conn, conn:
        assert conn.execute("UPDATE api_keys SET key_id = ? WHERE key_id = ?", (old_id, new_id)).rowcount == 1

    as_option = _run(["api-key", "revoke", old_id], tmp_path)
    assert as_option.returncode == 2 and "Traceback" not in as_option.stderr
    revoked = _run(["api-key", "revoke", "--", old_id], tmp_path)
    assert revoked.returncode == 0 and f"revoked {old_id}" in revoked.stdout, revoked.stdout + revoked.stderr
    rows = json.loads(_run(["api-key", "list", "--json"], tmp_path).stdout)
    assert [(r["key_id"], r["revoked_at"] is not None) for r in rows] == [(old_id, True)]


def test_mistakes_get_one_line_and_exit_2(tmp_path: Path) -> None:
    bad_scope = _run(["api-key", "create", "--name", "x", "--scope", "root"], tmp_path)
    assert bad_scope.returncode == 2 and "root" in bad_scope.stderr and "read, trade, admin" in bad_scope.stderr
    whole_key = _run(["api-key", "revoke", "gfk_AAAAAAAAAAAA_secretsecretsecret"], tmp_path)
    assert whole_key.returncode == 2 and "secretsecretsecret" not in whole_key.stderr
    for r in (bad_scope, whole_key):
        assert "Traceback" not in r.stderr
