"""DuckDB catalog: views over the Parquet tables, the three output formats, read-only access."""

import csv
import io
import json

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.catalog import connect, query
from schemas import CLIPS, SHARDS, SOURCES, TABLES, conform


def write_tables(out, names=("sources", "clips", "shards")):
    """A tiny output folder: two sources, three clips (one caption null, one start_s NaN), one shard."""
    tables = {
        "sources": conform(
            pa.table({"source_id": ["s1", "s2"], "uri": ["/v/a.mp4", "/v/b,c.mp4"], "status": ["ok", "error"],
                      "fps": [25.0, None], "alias_uris": [["/v/a2.mp4"], None]}),
            SOURCES,
        ),
        "clips": conform(
            pa.table({"clip_id": ["c1", "c2", "c3"], "source_id": ["s1", "s1", "s1"], "start_frame": [0, 50, 100],
                      "end_frame": [50, 100, 150], "status": ["kept", "kept", "filtered"],
                      "caption": ['a "quoted", caption', None, "x"], "license": ["CC0-1.0"] * 3,
                      "start_s": [0.0, 2.0, float("nan")]}),
            CLIPS,
        ),
        "shards": conform(
            pa.table({"shard": ["shards/shard-000000.tar"], "n_samples": [2], "bytes": [10240],
                      "sha256": ["ab" * 32], "licenses": [["CC0-1.0", "MIT"]]}),
            SHARDS,
        ),
    }
    (out / "tables").mkdir(parents=True, exist_ok=True)
    for name in names:
        pq.write_table(tables[name], out / "tables" / f"{name}.parquet")


def test_json_format(tmp_path):
    write_tables(tmp_path)
    rows = json.loads(query(str(tmp_path), "SELECT clip_id, start_frame, caption, start_s FROM clips ORDER BY clip_id",
                            "json"))
    assert rows == [
        {"clip_id": "c1", "start_frame": 0, "caption": 'a "quoted", caption', "start_s": 0.0},
        {"clip_id": "c2", "start_frame": 50, "caption": None, "start_s": 2.0},
        {"clip_id": "c3", "start_frame": 100, "caption": "x", "start_s": None},  # NaN -> null
    ]
    assert list(rows[0]) == ["clip_id", "start_frame", "caption", "start_s"]
    shards = json.loads(query(str(tmp_path), "SELECT * FROM shards", "json"))
    assert shards[0]["licenses"] == ["CC0-1.0", "MIT"]
    extra = json.loads(query(str(tmp_path), "SELECT DATE '2024-05-01' AS d, '\\x01\\xff'::BLOB AS b", "json"))
    assert extra == [{"d": "2024-05-01", "b": "Af8="}]


def test_csv_format(tmp_path):
    write_tables(tmp_path)
    text = query(str(tmp_path), "SELECT source_id, uri, fps, alias_uris FROM sources ORDER BY source_id", "csv")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["source_id", "uri", "fps", "alias_uris"], ["s1", "/v/a.mp4", "25.0", '["/v/a2.mp4"]'],
                    ["s2", "/v/b,c.mp4", "", ""]]
    text = query(str(tmp_path), "SELECT caption FROM clips WHERE clip_id = 'c1'", "csv")
    assert list(csv.DictReader(io.StringIO(text))) == [{"caption": 'a "quoted", caption'}]


def test_table_format(tmp_path):
    write_tables(tmp_path)
    text = query(str(tmp_path), "SELECT clip_id, start_frame, caption FROM clips ORDER BY clip_id")
    lines = text.splitlines()
    assert lines[0].split() == ["clip_id", "start_frame", "caption"]
    assert set(lines[1]) <= {"-", " "}
    assert "c2" in lines[3] and "NULL" in lines[3]
    assert lines[-1] == "(3 rows)"
    assert len({len(line) for line in lines[1:3]}) == 1  # aligned columns


def test_unknown_format(tmp_path):
    write_tables(tmp_path)
    with pytest.raises(ValueError, match="'xml'"):
        query(str(tmp_path), "SELECT 1", "xml")


def test_missing_table_is_an_empty_view_that_binds(tmp_path):
    write_tables(tmp_path, names=("clips",))
    assert json.loads(query(str(tmp_path), "SELECT shard, licenses FROM shards", "json")) == []
    con = connect(str(tmp_path))
    for name, schema in TABLES.items():
        assert [r[0] for r in con.execute(f"DESCRIBE {name}").fetchall()] == schema.names
    joined = con.execute("SELECT count(*) FROM clips JOIN sources USING (source_id)").fetchone()
    assert joined == (0,)


def test_missing_tables_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="tables"):
        connect(str(tmp_path / "nothing-here"))


def test_sql_errors_propagate(tmp_path):
    write_tables(tmp_path)
    with pytest.raises(duckdb.Error):
        query(str(tmp_path), "SELECT no_such_column FROM clips")


@pytest.mark.parametrize(
    "sql",
    [
        "COPY clips TO '{tmp}/x.csv'",
        "COPY (SELECT 1 AS a) TO '{tmp}/tables/clips.parquet' (FORMAT parquet, USE_TMP_FILE false)",
        "ATTACH '{tmp}/x.duckdb' AS x",
        "SELECT * FROM read_csv('{tmp}/tables/clips.parquet')",
        "SET enable_external_access = true",
    ],
)
def test_catalog_is_read_only(tmp_path, sql):
    write_tables(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    clips = (tmp_path / "tables" / "clips.parquet").read_bytes()
    with pytest.raises(duckdb.Error):
        query(str(tmp_path), sql.format(tmp=tmp_path))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "tables" / "clips.parquet").read_bytes() == clips


def test_fsspec_memory_output(tmp_path):
    write_tables(tmp_path)
    fs = fsspec.filesystem("memory")
    for name in ("sources", "clips", "shards"):
        fs.pipe(f"/catalog-test/tables/{name}.parquet", (tmp_path / "tables" / f"{name}.parquet").read_bytes())
    try:
        kept = query("memory://catalog-test", "SELECT count(*) AS n FROM clips WHERE status = 'kept'", "json")
        assert json.loads(kept) == [{"n": 2}]
        assert json.loads(query("memory://catalog-test", "SELECT count(*) AS n FROM scenes", "json")) == [{"n": 0}]
    finally:
        fs.rm("/catalog-test", recursive=True)
