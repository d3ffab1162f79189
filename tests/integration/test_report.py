"""OUT/report.html: numbers that agree with `curate query`, rendered by a real browser."""

import json
import os
import re
import shutil
import subprocess

import cv2
import pytest

from curate.catalog import query
from curate.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.ray


def embedded(report_html: str) -> dict:
    m = re.search(r'<script id="curate-report" type="application/json">(.*?)</script>', report_html, re.S)
    assert m, "report has no embedded numbers"
    return json.loads(m.group(1).replace("<\\/", "</"))


def q(out, sql):
    return json.loads(query(str(out), sql, "json"))


def test_report_numbers_agree_with_the_catalog(demo_out):
    data = embedded((demo_out / "report.html").read_text())
    funnel = {f["step"]: f for f in data["funnel"]}
    expected = {
        "sources": "select count(*) as n, coalesce(sum(duration_s), 0) / 3600 as h from sources where status = 'ok'",
        "scenes": "select count(*) as n, coalesce(sum(end_s - start_s), 0) / 3600 as h from scenes",
        "clips": "select count(*) as n, coalesce(sum(duration_s), 0) / 3600 as h from clips",
        "kept": "select count(*) as n, coalesce(sum(duration_s), 0) / 3600 as h from clips where status = 'kept'",
        "captioned": "select count(*) as n, coalesce(sum(duration_s), 0) / 3600 as h from clips where status = 'kept' and caption is not null",
        "sharded": "select count(*) as n, coalesce(sum(duration_s), 0) / 3600 as h from clips where shard is not null",
    }
    for step, sql in expected.items():
        row = q(demo_out, sql)[0]
        assert funnel[step]["count"] == row["n"], step
        assert funnel[step]["hours"] == pytest.approx(row["h"], abs=1e-9), step
    assert funnel["kept"]["count"] > 0
    per_licence = {r["license"]: r["n"] for r in q(demo_out, "select license, count(*) as n from clips where status = 'kept' group by 1")}
    assert {e["license"]: e["clips"] for e in data["licenses"]} == per_licence
    assert set(data["stage_s"]) >= {"inputs", "stream", "shards", "tables"}
    # burned-in text and NSFW are drawn as scores; the demo's nsfw_score < 0.5 is a threshold with thumbnails near it
    assert {"text_area", "nsfw_score", "motion_score", "watermark_score"} <= set(data["score_columns"])
    page = (demo_out / "report.html").read_text()
    assert "<h3>text_area</h3>" in page and "Passing just inside nsfw_score &lt; 0.5" in page


def test_report_command_and_errors_by_reason(tmp_path, ray_session, videos, ffmpeg):
    from tests.conftest import make_bad_files

    inputs = tmp_path / "in"
    expected = make_bad_files(inputs, ffmpeg)
    shutil.copyfile(videos / "counter.mp4", inputs / "counter.mp4")
    out = tmp_path / "out"
    assert main(["run", str(ROOT / "jobs" / "demo.yaml"), "--set", f"input.dir={inputs}", "--set", "input.license=MIT",
                 "--set", f"output={out}", "--set", "split.encode.preset=ultrafast"]) == 0
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    data = embedded((out / "report.html").read_text())
    by_reason = {(e["table"], e["reason"]): e["count"] for e in data["errors"]}
    for reason in set(expected.values()):
        assert by_reason[("sources", reason)] == list(expected.values()).count(reason)
    assert main(["report", str(tmp_path / "nothing")]) == 2


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI"):
        pytest.fail("CI must have a browser: .ci/run installs Debian's chromium")
    pytest.skip("no chromium on this machine (apt-get install chromium)")


def test_report_renders_in_a_real_browser(demo_out):
    browser = _chromium()
    url = (demo_out / "report.html").as_uri()
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]
    dom = subprocess.run([browser, *flags, "--enable-logging=stderr", "--v=0", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # no script errors, no failed loads
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    images = int(re.search(r'data-images="(\d+)"', body).group(1))
    decoded = int(re.search(r'data-images-decoded="(\d+)"', body).group(1))
    assert images >= 3 and decoded == images  # every thumbnail decoded
    assert "<table class=\"funnel\">" in dom.stdout or "class=\"funnel\"" in dom.stdout
    for step in ("sources", "scenes", "clips", "kept", "captioned", "sharded"):
        assert f"<td>{step}</td>" in dom.stdout

    artefacts = ROOT / "test-artifacts"
    artefacts.mkdir(exist_ok=True)
    shot = artefacts / "report.png"
    run = subprocess.run([browser, *flags, "--window-size=1280,1800", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[1] == 1280
    assert img.std() > 20  # a page with pictures, not a blank one
