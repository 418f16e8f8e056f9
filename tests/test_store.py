"""The SQLite metadata store (pure logic on a temp file)."""

from __future__ import annotations

import sqlite3

import pytest

from pycri.state import store as s


def test_new_database_is_at_the_latest_schema_in_wal_mode(tmp_path):
    st = s.Store(tmp_path / "m.db")
    assert st.schema_version == s.SCHEMA_VERSION
    assert st.query_one("PRAGMA journal_mode")[0] == "wal"
    tables = {r["name"] for r in st.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"images", "image_names", "sandboxes", "containers", "settings"} <= tables


def test_reopening_keeps_data_and_does_not_migrate_twice(tmp_path):
    st = s.Store(tmp_path / "m.db")
    st.execute("INSERT INTO settings VALUES ('k', 'v')")
    st.close()
    st = s.Store(tmp_path / "m.db")
    assert st.query_one("SELECT value FROM settings WHERE key = 'k'")["value"] == "v"


def test_a_newer_schema_is_refused(tmp_path):
    db = sqlite3.connect(tmp_path / "m.db")
    db.execute(f"PRAGMA user_version = {s.SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(s.StoreError, match="newer than this pycri"):
        s.Store(tmp_path / "m.db")


def test_transaction_rolls_back_on_error_and_nests(tmp_path):
    st = s.Store(tmp_path / "m.db")
    with pytest.raises(RuntimeError):
        with st.transaction():
            st.execute("INSERT INTO images VALUES ('sha256:a', '{}')")
            with st.transaction():
                st.execute("INSERT INTO image_names VALUES ('a:1', 'sha256:a')")
            raise RuntimeError("boom")
    assert st.query("SELECT * FROM images") == []
    with st.transaction():
        st.execute("INSERT INTO images VALUES ('sha256:a', ?)", (s.dumps({"b": 1, "a": 2}),))
        st.execute("INSERT INTO image_names VALUES ('a:1', 'sha256:a')")
    assert s.loads(st.query_one("SELECT data FROM images")["data"]) == {"a": 2, "b": 1}


def test_removing_an_image_removes_its_names(tmp_path):
    st = s.Store(tmp_path / "m.db")
    st.execute("INSERT INTO images VALUES ('sha256:a', '{}')")
    st.execute("INSERT INTO image_names VALUES ('a:1', 'sha256:a')")
    st.execute("DELETE FROM images WHERE id = 'sha256:a'")
    assert st.query("SELECT * FROM image_names") == []
