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


# ------------------------------------------------------------------------------ partitioned tables


def clip_rows(n):
    """`n` clips of 4 sources, bucket = source index (0, 3, 7, 12), two licences."""
    buckets = [0, 3, 7, 12]
    table = conform(
        pa.table({"clip_id": [f"c{i:03d}" for i in range(n)], "source_id": [f"s{i % 4}" for i in range(n)],
                  "start_frame": list(range(n)), "end_frame": [i + 10 for i in range(n)],
                  "status": ["kept" if i % 5 else "filtered" for i in range(n)],
                  "license": ["CC0-1.0" if i % 3 else "CC-BY-4.0" for i in range(n)],
                  "duration_s": [0.5 + i / 8 for i in range(n)], "caption": [f"caption {i}" for i in range(n)]}),
        CLIPS,
    )
    return table, [buckets[i % 4] for i in range(n)]


def write_partitioned(root, name, table, buckets):
    """tables/<name>/bucket=NNNNN/part-*.parquet: each bucket in two parts (the first one written before
    `caption` existed), plus two interrupted writes (`*.tmp-*`, one hidden) and a hidden staging folder,
    none of them Parquet."""
    folder = root / "tables" / name
    (folder / "_staging").mkdir(parents=True)
    (folder / "_staging" / "part-x.parquet").write_bytes(b"not yet")
    for b in sorted(set(buckets)):
        part = table.filter(pa.array([x == b for x in buckets]))
        d = folder / f"bucket={b:05d}"
        d.mkdir(parents=True)
        half = part.num_rows // 2
        pq.write_table(part.slice(0, half).drop_columns(["caption"]), d / f"part-{b}a.parquet")
        pq.write_table(part.slice(half), d / f"part-{b}b.parquet")
        (d / f"part-{b}c.parquet.tmp-123").write_bytes(b"half a file")
        (d / f".part-{b}d.parquet.tmp-456").write_bytes(b"half a file")


def test_partitioned_table_is_queryable_beside_single_files(tmp_path):
    write_tables(tmp_path, names=("sources", "shards"))  # the old single-file form, in the same output
    clips, buckets = clip_rows(40)
    write_partitioned(tmp_path, "clips", clips, buckets)
    con = connect(str(tmp_path))
    assert [r[0] for r in con.execute("DESCRIBE clips").fetchall()] == CLIPS.names + ["bucket"]
    assert con.execute("SELECT typeof(bucket) FROM clips LIMIT 1").fetchone() == ("INTEGER",)
    got = con.execute("SELECT clip_id, bucket, caption FROM clips ORDER BY clip_id").fetchall()
    ids = clips["clip_id"].to_pylist()
    no_caption = {c for b in set(buckets) for c in [c for c, x in zip(ids, buckets) if x == b][:5]}  # each first part
    assert got == [(c, b, None if c in no_caption else f"caption {int(c[1:])}") for c, b in zip(ids, buckets)]
    assert con.execute("SELECT count(*) FROM sources").fetchone() == (2,)  # single file: unchanged
    assert con.execute("SELECT count(*) FROM scenes").fetchone() == (0,)  # missing: empty
    joined = con.execute("SELECT count(*) FROM clips JOIN sources USING (source_id)").fetchone()
    assert joined == (20,)  # sources has s1 and s2 (10 clips each), clips s0..s3


def test_partition_pruning_does_not_change_results(tmp_path):
    clips, buckets = clip_rows(40)
    write_partitioned(tmp_path / "parts", "clips", clips, buckets)
    (tmp_path / "single" / "tables").mkdir(parents=True)
    pq.write_table(clips, tmp_path / "single" / "tables" / "clips.parquet")
    sql = "SELECT license, status, count(*), sum(duration_s) FROM clips {} GROUP BY ALL ORDER BY ALL"
    single, parts = connect(str(tmp_path / "single")), connect(str(tmp_path / "parts"))
    assert parts.execute(sql.format("")).fetchall() == single.execute(sql.format("")).fetchall()
    for chosen in ([3], [0, 12]):
        sources = ", ".join(f"'s{[0, 3, 7, 12].index(b)}'" for b in chosen)
        pruned = parts.execute(sql.format(f"WHERE bucket IN ({', '.join(map(str, chosen))})")).fetchall()
        assert pruned == single.execute(sql.format(f"WHERE source_id IN ({sources})")).fetchall()
        assert sum(r[2] for r in pruned) == 10 * len(chosen)
    # Pruning is real: a corrupt part in bucket 99 breaks a full scan, not a query of another bucket.
    (tmp_path / "parts" / "tables" / "clips" / "bucket=00099").mkdir()
    (tmp_path / "parts" / "tables" / "clips" / "bucket=00099" / "part-x.parquet").write_bytes(b"not parquet")
    parts = connect(str(tmp_path / "parts"))
    assert parts.execute("SELECT count(*) FROM clips WHERE bucket = 7").fetchone() == (10,)
    with pytest.raises(Exception, match="(?i)parquet"):
        parts.execute("SELECT count(*) FROM clips").fetchall()


def test_output_reads_either_layout(tmp_path):
    from curate.storage import Output

    write_tables(tmp_path, names=("sources",))
    clips, buckets = clip_rows(12)
    write_partitioned(tmp_path, "clips", clips, buckets)
    (tmp_path / "tables" / "shards").mkdir()  # a partitioned table with no part yet
    out = Output(str(tmp_path))
    assert [out.has_table(n) for n in ("sources", "clips", "shards", "scenes")] == [True, True, True, False]
    read = out.read_table("clips")
    assert read.schema.names == CLIPS.names  # no bucket: callers see the columns they saw before
    assert read.sort_by("clip_id")["clip_id"].to_pylist() == clips["clip_id"].to_pylist()
    assert read.sort_by("clip_id")["duration_s"].to_pylist() == clips["duration_s"].to_pylist()
    assert out.read_table("sources").num_rows == 2
    empty = out.read_table("shards")
    assert empty.num_rows == 0 and empty.schema.names == SHARDS.names
    assert json.loads(query(str(tmp_path), "SELECT count(*) AS n FROM shards WHERE bucket = 1", "json")) == [{"n": 0}]
    with pytest.raises(FileNotFoundError):
        out.read_table("scenes")


def test_fsspec_memory_partitioned(tmp_path):
    clips, buckets = clip_rows(20)
    write_partitioned(tmp_path, "clips", clips, buckets)
    fs = fsspec.filesystem("memory")
    for p in (tmp_path / "tables").rglob("*"):
        if p.is_file():
            fs.pipe(f"/catalog-parts/{p.relative_to(tmp_path).as_posix()}", p.read_bytes())
    try:
        rows = query("memory://catalog-parts", "SELECT bucket, count(*) AS n FROM clips GROUP BY 1 ORDER BY 1", "json")
        assert json.loads(rows) == [{"bucket": b, "n": 5} for b in (0, 3, 7, 12)]
    finally:
        fs.rm("/catalog-parts", recursive=True)


def test_query_bench_small(capsys):
    from curate.bench.query import main

    assert main(["--rows", "3000", "--buckets", "8", "--repeat", "1", "--no-cli"]) == 0
    printed = capsys.readouterr().out
    assert "16 files in 8 buckets" in printed
    assert [line.split()[0] for line in printed.splitlines()[3:]] == ["licence", "source", "one"]
