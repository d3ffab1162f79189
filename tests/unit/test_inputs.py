import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.config import InputConfig
from curate.inputs import InputError, Listing, list_dir, read_manifest


def test_dir_lists_video_files_sorted_with_defaults(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.mp4", "a.MOV", "sub/c.mkv", "notes.txt", "sub/thumb.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    rows, others = list_dir(InputConfig(dir=str(tmp_path), license="CC-BY-4.0", author="Ann"))
    assert [r.rsplit("/", 1)[1] for r in rows["uri"].to_pylist()] == ["a.MOV", "b.mp4", "c.mkv"]
    assert set(rows["license"].to_pylist()) == {"CC-BY-4.0"} and set(rows["author"].to_pylist()) == {"Ann"}
    assert others == 2  # notes.txt, sub/thumb.jpg


def test_missing_dir_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not a readable folder"):
        list_dir(InputConfig(dir=str(tmp_path / "nope")))


ROWS = [
    {"uri": "clips/one.mp4", "license": "MIT", "title": "One", "author": "A"},
    {"uri": "/abs/two.mp4", "license": None, "title": None, "author": None},
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_formats(tmp_path, fmt):
    path = tmp_path / f"manifest.{fmt}"
    if fmt == "csv":
        path.write_text("uri,license,title,author\nclips/one.mp4,MIT,One,A\n/abs/two.mp4,,,\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    rows = read_manifest(InputConfig(manifest=str(path), license="CC0-1.0", source_url="https://example.org")).to_pylist()
    assert rows[0]["uri"] == str(tmp_path / "clips" / "one.mp4")  # relative to the manifest
    assert (rows[0]["license"], rows[0]["title"], rows[0]["author"]) == ("MIT", "One", "A")
    assert rows[1]["uri"] == "/abs/two.mp4"
    assert rows[1]["license"] == "CC0-1.0"  # the job's default fills the gap
    assert rows[1]["source_url"] == "https://example.org"


def test_manifest_errors(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("path,license\nx.mp4,MIT\n")
    with pytest.raises(InputError, match="missing column"):
        read_manifest(InputConfig(manifest=str(bad)))
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(InputConfig(manifest=str(tmp_path / "none.csv")))
    other = tmp_path / "m.xlsx"
    other.write_bytes(b"x")
    with pytest.raises(InputError, match="unknown format"):
        read_manifest(InputConfig(manifest=str(other)))


def test_a_folder_named_like_a_video_is_an_input(tmp_path):
    (tmp_path / "broken.mp4").mkdir()  # an error row later, never silently dropped
    (tmp_path / "broken.mp4" / "inner.mkv").write_bytes(b"x")
    rows, others = list_dir(InputConfig(dir=str(tmp_path)))
    assert [r[len(str(tmp_path)):] for r in rows["uri"].to_pylist()] == ["/broken.mp4", "/broken.mp4/inner.mkv"] and others == 0


def test_a_folder_is_walked_in_waves_in_a_fixed_order(tmp_path):
    names = [f"d{d}/v{i:03d}.mp4" for d in (2, 0, 1) for i in range(7)] + ["top.mp4", "d1/skip.txt"]
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    listing = Listing(InputConfig(dir=str(tmp_path), license="MIT"), rows=5)
    got = list(listing)
    assert [t.num_rows for t in got] == [5, 5, 5, 5, 2]  # the waves, whatever the directories' sizes
    uris = [u[len(str(tmp_path)) + 1:] for t in got for u in t["uri"].to_pylist()]
    assert uris == ["top.mp4"] + [f"d{d}/v{i:03d}.mp4" for d in (0, 1, 2) for i in range(7)]
    assert (listing.n, listing.others) == (22, 1) and set(got[0]["license"].to_pylist()) == {"MIT"}


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_large_manifest_is_read_in_waves(tmp_path, fmt, monkeypatch):
    """A manifest is streamed: every row once, in order, in tables of at most `rows`, whatever the
    reader's own block sizes; the job's defaults fill each block; a column null for the first blocks
    and strings later (JSON Lines' per-block types) and numbers in a text column are read."""
    import curate.inputs as inputs

    monkeypatch.setattr(inputs, "_BLOCK_BYTES", 4096)  # many reader blocks
    n = 3000
    rows = [{"uri": f"v/{i:05d}.mp4", "license": None if i < 2000 else "MIT", "title": i, "author": None} for i in range(n)]
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        path.write_text("uri,license,title,author\n" + "".join(f"{r['uri']},{r['license'] or ''},{r['title']},\n" for r in rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=700)
    listing = Listing(InputConfig(manifest=str(path), license="CC0-1.0"), rows=1000)
    got = list(listing)
    assert [t.num_rows for t in got] == [1000, 1000, 1000] and listing.n == n
    table = pa.concat_tables(got)
    assert table["uri"].to_pylist() == [str(tmp_path / "v" / f"{i:05d}.mp4") for i in range(n)]
    assert table["license"].to_pylist() == ["CC0-1.0"] * 2000 + ["MIT"] * 1000
    assert table["title"].to_pylist() == [str(i) for i in range(n)] and table.schema == inputs.INPUT_SCHEMA
