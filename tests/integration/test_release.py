"""Licences end to end on real footage: policy in the job, byte-identical reruns, verify, takedown."""

import csv
import hashlib
import json
from pathlib import Path

import pytest
import webdataset as wds

from curate.catalog import query
from curate.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.ray

ARGS = ["--set", "input.samples=null", "--set", "split.encode.preset=ultrafast", "--set", "split.encode.max_height=144",
        "--set", "shards.max_samples=2", "--set", "select.where=null"]  # fmt: skip


def q(out, sql):
    return json.loads(query(str(out), sql, "json"))


def run(manifest: Path, out: Path, *extra: str) -> None:
    rc = main(["run", str(ROOT / "jobs" / "demo.yaml"), "--set", f"input.manifest={manifest}", "--set", f"output={out}", *ARGS, *extra])
    assert rc == 0


def tars(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "shards").rglob("*.tar"))}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, videos):
    folder = tmp_path_factory.mktemp("manifest")
    path = folder / "manifest.csv"
    path.write_text(
        "uri,license,title,author,source_url\n"
        f"{videos / 'bigbuckbunny.mp4'},CC-BY-3.0,Big Buck Bunny,Blender Foundation,https://peach.blender.org\n"
        f"{videos / 'counter.mp4'},MIT OR GPL-3.0-only,counter,,\n"
        f"{videos / 'carphone_distorted.mp4'},CC-BY-NC-4.0,carphone,someone,\n"
    )
    return path


def test_licences_verify_takedown_and_reruns(ray_session, manifest, tmp_path, videos, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    run(manifest, a)
    clips = q(a, "select source_uri, license, status, reason, shard, source_sha256 from clips order by all")
    by_name = {}
    for c in clips:
        by_name.setdefault(c["source_uri"].rsplit("/", 1)[1], []).append(c)
    assert {(c["status"], c["reason"]) for c in by_name["carphone_distorted.mp4"]} == {("filtered", "licence")}
    # every clip the split made of the allowed sources ships, none lost at a window's end: bigbuckbunny's
    # 5.28 s at max_clip_s 5 is 4.28 s + 1 s (min_clip_s), counter.mp4's three 1 s scenes one clip each
    allowed = by_name["bigbuckbunny.mp4"] + by_name["counter.mp4"]
    assert len(allowed) == 5 and all(c["status"] == "kept" and c["shard"] for c in allowed)
    bunny_sha = hashlib.sha256((videos / "bigbuckbunny.mp4").read_bytes()).hexdigest()
    assert {c["source_sha256"] for c in by_name["bigbuckbunny.mp4"]} == {bunny_sha}

    # the README's reading code: plain webdataset, no curate
    urls = [str(a / s["shard"]) for s in json.loads((a / "index.json").read_text())["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert sorted(s["json"]["license"] for s in samples) == sorted(c["license"] for c in clips if c["status"] == "kept")
    assert all(s["mp4"][4:8] == b"ftyp" and "start_frame" in s["json"] and "source_uri" in s["json"] for s in samples)
    with open(a / "ATTRIBUTION.csv", newline="") as f:
        credits = list(csv.DictReader(f))
    assert [(r["title"], r["author"], r["source_url"], r["license"]) for r in credits] == [
        ("Big Buck Bunny", "Blender Foundation", "https://peach.blender.org", "CC-BY-3.0")
    ]
    assert main(["verify", str(a)]) == 0

    # a second run into another folder gives byte-identical shards and index
    run(manifest, b)
    assert tars(a) == tars(b) and len(tars(a)) >= 2
    assert (a / "index.json").read_bytes() == (b / "index.json").read_bytes()

    # takedown by uri: only the shards that held it change; verify passes; no byte of it is left
    before = tars(a)
    held = {c["shard"] for c in by_name["bigbuckbunny.mp4"]}
    capsys.readouterr()
    assert main(["takedown", str(a), "--source", str(videos / "bigbuckbunny.mp4"), "--reason", "owner asked"]) == 0
    shipped = sum(1 for c in by_name["bigbuckbunny.mp4"] if c["status"] == "kept")
    assert f"{shipped} clips removed" in capsys.readouterr().out
    after = tars(a)
    assert {k: v for k, v in before.items() if k not in held} == {k: v for k, v in after.items() if k not in held}
    bunny_files = sorted((b / "clips").glob(f"{bunny_sha[:16]}_*.mp4"))  # run b still has its clip files
    assert bunny_files
    for data in after.values():
        assert bunny_sha[:16].encode() not in data
        assert all(f.read_bytes()[-4096:] not in data for f in bunny_files)
    assert not list((a / "clips").glob(f"{bunny_sha[:16]}_*"))
    assert main(["verify", str(a)]) == 0
    assert (a / "ATTRIBUTION.csv").read_text().count("\n") == 1  # the header only
    assert q(a, "select reason from takedowns") == [{"reason": "owner asked"}]

    # a rerun honours the takedown
    run(manifest, a)
    assert not q(a, "select * from clips where source_sha256 = '%s' and status = 'kept'" % bunny_sha)
    assert main(["verify", str(a)]) == 0

    # a tampered tar fails verify, which names it
    name = sorted(tars(a))[0]
    data = bytearray((a / name).read_bytes())
    data[data.index(b"ftyp") + 200] ^= 1  # one bit inside a clip's mp4 payload
    (a / name).write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(a)]) == 1
    captured = capsys.readouterr()
    assert name in captured.out and "sha256" in captured.out and "1 problem" in captured.err
