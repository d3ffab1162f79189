import hashlib
import shutil

import pyarrow as pa
import pytest

from schemas import SOURCES
from stages.ingest import NOASSERTION, Ingest, fold_duplicates, normalize_license
from tests.conftest import make_bad_files


@pytest.mark.parametrize(
    "raw, spdx",
    [
        ("cc-by-4.0", "CC-BY-4.0"),
        ("CC BY 4.0", "CC-BY-4.0"),
        ("cc0", "CC0-1.0"),
        ("mit", "MIT"),
        ("Apache 2.0", "Apache-2.0"),
        ("MIT OR Apache-2.0", "MIT OR Apache-2.0"),
        ("cc-by-nc-sa-4.0", "CC-BY-NC-SA-4.0"),
        ("LicenseRef-Studio-Internal", "LicenseRef-Studio-Internal"),
        ("all rights reserved", NOASSERTION),
        ("", NOASSERTION),
        (None, NOASSERTION),
    ],
)
def test_licences_become_spdx(raw, spdx):
    assert normalize_license(raw) == spdx


def test_probe_facts_of_real_videos(videos, ground_truth):
    names = ["bikes.mp4", "goldeneye-vfr-drop3.mp4", "delayed_start.mp4", "issue-134-rotate.mp4", "vtest.avi", "testvideo.mp4"]
    table = Ingest()(pa.table({"uri": [str(videos / n) for n in names], "license": ["CC-BY-4.0"] * len(names)}))
    assert table.schema == SOURCES
    rows = {r["uri"].rsplit("/", 1)[1]: r for r in table.to_pylist()}
    assert all(r["status"] == "ok" for r in rows.values())

    bikes = rows["bikes.mp4"]
    assert (bikes["width"], bikes["height"], bikes["fps"], bikes["n_frames"]) == (640, 272, 25.0, 250)
    assert bikes["vfr"] is False and bikes["codec"] == "h264"
    assert bikes["sha256"] == hashlib.sha256((videos / "bikes.mp4").read_bytes()).hexdigest()
    assert bikes["source_id"] == bikes["sha256"][:16]
    assert bikes["license"] == "CC-BY-4.0"

    assert rows["goldeneye-vfr-drop3.mp4"]["vfr"] is True
    assert rows["testvideo.mp4"]["vfr"] is False  # B-frames reorder timestamps; the rate is constant
    assert rows["goldeneye-vfr-drop3.mp4"]["n_frames"] == ground_truth["goldeneye-vfr-drop3.mp4"]["decoded_frames"]
    assert rows["delayed_start.mp4"]["stream_start_s"] == pytest.approx(1.075)
    # displayed size after the -90 degree display matrix: 544x1280, not the coded 1280x544
    rot = rows["issue-134-rotate.mp4"]
    assert (rot["width"], rot["height"], rot["rotation"]) == (544, 1280, -90)
    assert rows["vtest.avi"]["container"] == "avi" and rows["vtest.avi"]["n_frames"] == 795


def test_bad_files_become_error_rows(tmp_path, ffmpeg):
    expected = make_bad_files(tmp_path, ffmpeg)
    uris = [str(tmp_path / n) for n in sorted(expected)] + [str(tmp_path / "missing.mp4"), str(tmp_path)]
    table = Ingest()(pa.table({"uri": uris, "license": ["MIT"] * len(uris)}))
    rows = {r["uri"].rsplit("/", 1)[1]: r for r in table.to_pylist()}
    for name, reason in expected.items():
        if name == "faststart_cut.mp4":
            continue  # its index is intact: probing succeeds, the split finds the frames missing
        assert (rows[name]["status"], rows[name]["reason"]) == ("error", reason), name
        assert rows[name]["error"]
    assert rows["missing.mp4"]["reason"] == "missing"
    assert rows[tmp_path.name]["reason"] == "unreadable"  # a folder where a file was expected
    assert rows["faststart_cut.mp4"]["status"] == "ok"


def test_manifest_row_without_uri_is_an_error_row():
    row = Ingest()(pa.table({"uri": pa.array([None], pa.string()), "license": ["MIT"]})).to_pylist()[0]
    assert (row["status"], row["reason"], row["uri"]) == ("error", "bad_manifest_row", "")


def test_same_bytes_under_two_names_is_one_source(tmp_path, videos):
    a, b = tmp_path / "a.mp4", tmp_path / "b copy.mp4"
    shutil.copyfile(videos / "counter.mp4", a)
    shutil.copyfile(videos / "counter.mp4", b)
    table = fold_duplicates(Ingest()(pa.table({"uri": [str(b), str(a)], "license": ["MIT", "MIT"]})))
    assert table.num_rows == 1
    row = table.to_pylist()[0]
    assert row["uri"] == str(a) and row["alias_uris"] == [str(b)]


def test_folded_duplicate_keeps_the_credits_given_under_another_name(tmp_path, videos):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    shutil.copyfile(videos / "counter.mp4", a)
    shutil.copyfile(videos / "counter.mp4", b)
    rows = {"uri": [str(a), str(b)], "license": ["CC-BY-4.0", "MIT"], "author": [None, "Ann"], "title": ["first", "second"]}
    row = fold_duplicates(Ingest()(pa.table(rows))).to_pylist()[0]
    assert (row["uri"], row["license"], row["author"], row["title"]) == (str(a), "CC-BY-4.0", "Ann", "first")
