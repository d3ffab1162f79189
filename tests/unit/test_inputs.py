import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.config import InputConfig
from curate.inputs import InputError, list_dir, read_manifest


def test_dir_lists_video_files_sorted_with_defaults(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.mp4", "a.MOV", "sub/c.mkv", "notes.txt", "sub/thumb.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    rows, others = list_dir(InputConfig(dir=str(tmp_path), license="CC-BY-4.0", author="Ann"))
    assert [r.rsplit("/", 1)[1] for r in rows["uri"].to_pylist()] == ["a.MOV", "b.mp4", "c.mkv"]
    assert set(rows["license"].to_pylist()) == {"CC-BY-4.0"} and set(rows["author"].to_pylist()) == {"Ann"}
    assert sorted(o.rsplit("/", 1)[1] for o in others) == ["notes.txt", "thumb.jpg"]


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
