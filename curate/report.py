"""OUT/report.html: what survived each step and why, with pictures, in one self-contained file.

The funnel (counts and hours), a histogram of every score column with the job's thresholds drawn on
it, thumbnails (first, middle, last frame) of kept clips and of clips rejected just past each
threshold, errors grouped by reason, clips and hours per licence, time per stage. Images are inline
JPEG, charts inline SVG; nothing is fetched. The numbers are also embedded as JSON
(`<script id="curate-report" type="application/json">`) for tools and tests.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import math
import re
from dataclasses import dataclass

import av
import cv2
import numpy as np
import pyarrow as pa
import yaml

from curate.storage import Output
from schemas import ClipStatus, SourceStatus

THUMB_WIDTH = 160
GALLERY_SIZE = 6
# Shown as scores (histogram, thresholds, thumbnails near them) besides every float column named *_score.
SCORES_TOO = ("text_area",)
_CONDITION = re.compile(r"\b([a-z_][a-z0-9_]*)\s*(>=|<=|>|<)\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)", re.I)


@dataclass(frozen=True)
class Threshold:
    column: str
    op: str
    value: float

    def passes(self, x: float) -> bool:
        return {">=": x >= self.value, ">": x > self.value, "<=": x <= self.value, "<": x < self.value}[self.op]

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value:g}"


def thresholds(job: dict) -> list[Threshold]:
    """Comparisons of a column with a number in the job's selection predicate, if it has one."""
    where = ((job or {}).get("select") or {}).get("where") or ""
    return [Threshold(c, op, float(v)) for c, op, v in _CONDITION.findall(where)]


# ------------------------------------------------------------------------------------------ numbers


def _hours(values) -> float:
    return float(np.nansum(np.asarray([v for v in values if v is not None], dtype=np.float64))) / 3600 if values else 0.0


def gather(out: Output) -> dict:
    """Every number the report shows, from the tables (read with pyarrow, not through the catalog)."""
    sources, scenes, clips = (out.read_table(n) for n in ("sources", "scenes", "clips"))
    src, cl = sources.to_pylist(), clips.to_pylist()
    ok = [s for s in src if s["status"] == SourceStatus.OK]
    kept = [c for c in cl if c["status"] == ClipStatus.KEPT]
    captioned = [c for c in kept if c.get("caption")]
    sharded = [c for c in cl if c.get("shard")]
    scene_hours = _hours([e - s for s, e in zip(scenes["start_s"].to_pylist(), scenes["end_s"].to_pylist())])
    funnel = [
        {"step": "sources", "count": len(ok), "hours": _hours([s["duration_s"] for s in ok])},
        {"step": "scenes", "count": scenes.num_rows, "hours": scene_hours},
        {"step": "clips", "count": len(cl), "hours": _hours([c["duration_s"] for c in cl])},
        {"step": "kept", "count": len(kept), "hours": _hours([c["duration_s"] for c in kept])},
        {"step": "captioned", "count": len(captioned), "hours": _hours([c["duration_s"] for c in captioned])},
        {"step": "sharded", "count": len(sharded), "hours": _hours([c["duration_s"] for c in sharded])},
    ]
    errors = {}
    for table, rows in (("sources", src), ("clips", cl)):
        for r in rows:
            if r["status"] not in (SourceStatus.OK, ClipStatus.KEPT):
                e = errors.setdefault(f"{table}:{r['status']}:{r['reason']}", {
                    "table": table, "status": r["status"], "reason": r["reason"], "count": 0, "example": r.get("error") or "",
                    "uri": r.get("uri") or r.get("source_uri")})
                e["count"] += 1
    licences = {}
    for c in kept:
        entry = licences.setdefault(c["license"] or "NOASSERTION", {"license": c["license"] or "NOASSERTION", "clips": 0, "hours": 0.0})
        entry["clips"] += 1
        entry["hours"] += (c["duration_s"] or 0.0) / 3600
    summary = json.loads(out.fs.cat(out.path("summary.json"))) if out.exists("summary.json") else {}
    camera = {}
    for c in kept:
        if c.get("camera_motion"):
            camera[c["camera_motion"]] = camera.get(c["camera_motion"], 0) + 1
    groups = {}
    for c in cl:
        if c.get("duplicate_of"):
            groups.setdefault(c["duplicate_of"], []).append(c["clip_id"])
    return {
        "camera_motion": dict(sorted(camera.items())),  # kept clips per camera_motion label
        # representative -> its duplicates filtered in this run (the representative may be of an earlier output)
        "duplicate_groups": {k: sorted(v) for k, v in sorted(groups.items())},
        "funnel": funnel,
        "errors": sorted(errors.values(), key=lambda e: (-e["count"], e["table"], str(e["reason"]))),
        "licenses": sorted(licences.values(), key=lambda e: -e["clips"]),
        "stage_s": summary.get("stage_s", {}),
        "score_columns": [f.name for f in clips.schema if pa.types.is_floating(f.type) and (f.name.endswith("_score") or f.name in SCORES_TOO)],
    }


# ------------------------------------------------------------------------------------------ pictures


@functools.lru_cache(maxsize=1024)  # a clip shown in several galleries is decoded once
def thumbnails(uri: str, width: int = THUMB_WIDTH) -> tuple[str, ...]:
    """First, middle and last frame of a clip as data: URIs (JPEG); () when the clip cannot be read."""
    try:
        with av.open(uri) as c:
            s = c.streams.video[0]
            n = s.frames or 0
            wanted = sorted({0, max(0, n // 2), max(0, n - 1)})
            frames = {}
            for i, frame in enumerate(c.decode(s)):
                if i in wanted:
                    h = max(2, round(frame.height * width / frame.width))
                    frames[i] = frame.to_ndarray(width=width, height=h, format="bgr24")
                if i >= wanted[-1]:
                    break
    except (av.FFmpegError, OSError, IndexError):
        return ()
    out = []
    for i in wanted:
        if i in frames:
            ok, jpg = cv2.imencode(".jpg", frames[i], [cv2.IMWRITE_JPEG_QUALITY, 80])
            if ok:
                out.append("data:image/jpeg;base64," + base64.b64encode(jpg.tobytes()).decode())
    return tuple(out)


def histogram_svg(values: list[float], marks: list[Threshold], width: int = 420, height: int = 140, bins: int = 20) -> str:
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if vals.size == 0:
        return "<p class=muted>no values</p>"
    lo, hi = float(vals.min()), float(vals.max())
    for m in marks:
        lo, hi = min(lo, m.value), max(hi, m.value)
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(vals, bins=bins, range=(lo, hi))
    top = max(1, int(counts.max()))
    pad, bw = 24, (width - 2 * 24) / bins
    parts = [f'<svg class=hist width="{width}" height="{height + 30}" viewBox="0 0 {width} {height + 30}" role="img">']
    for i, cnt in enumerate(counts):
        h = (height - 10) * cnt / top
        parts.append(f'<rect x="{pad + i * bw:.1f}" y="{height - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" fill="#4a7bd0"><title>{edges[i]:.3g}–{edges[i + 1]:.3g}: {cnt}</title></rect>')
    for m in marks:
        x = pad + (m.value - lo) / (hi - lo) * (width - 2 * pad)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" stroke="#d03030" stroke-width="2"/>')
        parts.append(f'<text x="{x + 3:.1f}" y="12" font-size="11" fill="#d03030">{html.escape(str(m))}</text>')
    parts.append(f'<text x="{pad}" y="{height + 16}" font-size="11">{lo:.3g}</text>')
    parts.append(f'<text x="{width - pad}" y="{height + 16}" font-size="11" text-anchor="end">{hi:.3g}</text>')
    parts.append(f'<text x="{width / 2}" y="{height + 28}" font-size="11" text-anchor="middle">n = {vals.size}</text></svg>')
    return "".join(parts)


# ------------------------------------------------------------------------------------------ the page


def _gallery(title: str, rows: list[dict], scores: list[str]) -> str:
    cards = []
    for r in rows:
        imgs = "".join(f'<img src="{t}" alt="frame of {html.escape(r["clip_id"])}">' for t in thumbnails(r["clip_uri"])) if r.get("clip_uri") else ""
        facts = " · ".join(f"{c} {r[c]:.3g}" for c in scores if r.get(c) is not None)
        caption = f'<div class=caption>{html.escape(r["caption"])}</div>' if r.get("caption") else ""
        reason = f' — {html.escape(str(r["reason"]))}' if r.get("reason") else ""
        cards.append(
            f'<div class=card><div class=thumbs>{imgs or "<span class=muted>no clip file</span>"}</div>'
            f'<div class=id>{html.escape(r["clip_id"])}</div><div>{r["status"]}{reason} · {r["duration_s"]:.2f} s'
            f'{" · " + facts if facts else ""}</div>{caption}</div>'
        )
    body = "".join(cards) or "<p class=muted>none</p>"
    return f"<h3>{html.escape(title)}</h3><div class=gallery>{body}</div>"


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body or '<tr><td colspan=9 class=muted>none</td></tr>'}</tbody></table>"


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#1b1f24;padding:0 16px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 8px} .muted{color:#777}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 10px;text-align:left} th{background:#f4f6f8}
td:nth-child(n+2){font-variant-numeric:tabular-nums}
.funnel .bar{background:#4a7bd0;height:14px;border-radius:2px} .funnel td{vertical-align:middle}
.gallery{display:flex;flex-wrap:wrap;gap:12px} .card{border:1px solid #ddd;border-radius:6px;padding:8px;width:500px;font-size:12px}
.thumbs{display:flex;gap:4px} .thumbs img{width:160px;height:auto;border-radius:3px;background:#eee}
.id{font-family:ui-monospace,monospace;font-size:11px;color:#555;margin-top:4px;word-break:break-all} .caption{font-style:italic;margin-top:4px}
.hists{display:flex;flex-wrap:wrap;gap:24px}
"""

# Counts images that decoded; a test (and a curious user) reads body[data-images-decoded].
_CHECK = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-decoded', String(ok));
});
"""


def render(out: Output) -> str:
    data = gather(out)
    job = yaml.safe_load(out.fs.cat(out.path("job.yaml"))) if out.exists("job.yaml") else {}
    marks = thresholds(job)
    clips = out.read_table("clips")
    scores = data["score_columns"]
    parts = [f"<h1>curate report — {html.escape(str((job or {}).get('name', '')))}</h1>",
             f"<p class=muted>{html.escape(out.url)}</p>", "<h2>Funnel</h2>"]
    top = max([f["hours"] for f in data["funnel"]] + [1e-12])
    rows = "".join(
        f'<tr><td>{f["step"]}</td><td class=count>{f["count"]}</td><td class=hours>{f["hours"]:.4f}</td>'
        f'<td style="width:420px"><div class=bar style="width:{400 * f["hours"] / top:.0f}px"></div></td></tr>'
        for f in data["funnel"]
    )
    parts.append(f"<table class=funnel><thead><tr><th>step</th><th>clips / items</th><th>hours</th><th></th></tr></thead><tbody>{rows}</tbody></table>")

    parts.append("<h2>Scores</h2>")
    if scores:
        hists = []
        for col in scores:
            mine = [m for m in marks if m.column == col]
            hists.append(f"<div><h3>{col}</h3>{histogram_svg(clips[col].to_pylist(), mine)}</div>")
        parts.append(f"<div class=hists>{''.join(hists)}</div>")
    else:
        parts.append("<p class=muted>No score columns in this run.</p>")

    parts.append("<h2>Clips</h2>")
    rows = clips.to_pylist()
    kept = [r for r in rows if r["status"] == ClipStatus.KEPT]
    step = max(1, len(kept) // GALLERY_SIZE)
    parts.append(_gallery(f"Kept ({len(kept)})", kept[::step][:GALLERY_SIZE], scores))
    for m in marks:
        scored = [r for r in rows if r.get(m.column) is not None]
        near = sorted(scored, key=lambda r: abs(r[m.column] - m.value))
        below = [r for r in near if not m.passes(r[m.column])][:GALLERY_SIZE]
        above = [r for r in near if m.passes(r[m.column])][:GALLERY_SIZE]
        parts.append(_gallery(f"Rejected just past {m}", below, scores))
        parts.append(_gallery(f"Passing just inside {m} (each card shows its status)", above, scores))

    if data["camera_motion"]:
        parts.append("<h2>Camera motion (kept clips)</h2>")
        parts.append(_table(["camera_motion", "clips"], [[k, v] for k, v in data["camera_motion"].items()]))
    if data["duplicate_groups"]:
        groups = data["duplicate_groups"]
        parts.append(f"<h2>Near-duplicates ({len(groups)} groups, {sum(map(len, groups.values()))} clips filtered)</h2>")
        by_id = {r["clip_id"]: r for r in rows}
        for rep_id, dups in list(groups.items())[:GALLERY_SIZE]:
            members = [by_id[c] for c in [rep_id, *dups] if c in by_id]  # the representative is absent when it is of an earlier output
            parts.append(_gallery(f"Group of {rep_id}", members, scores))

    parts.append("<h2>Errors and filters by reason</h2>")
    parts.append(_table(["table", "status", "reason", "count", "example"],
                        [[e["table"], e["status"], e["reason"], e["count"], (e["example"] or e["uri"] or "")[:160]] for e in data["errors"]]))
    parts.append("<h2>Licences (kept clips)</h2>")
    parts.append(_table(["licence", "clips", "hours"], [[e["license"], e["clips"], f'{e["hours"]:.4f}'] for e in data["licenses"]]))
    parts.append("<h2>Time per stage</h2>")
    parts.append(_table(["stage", "seconds"], [[k, f"{v:.2f}"] for k, v in data["stage_s"].items()]))

    payload = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>curate report</title><style>{_CSS}</style></head><body>{''.join(parts)}"
        f'<script id="curate-report" type="application/json">{payload}</script><script>{_CHECK}</script></body></html>'
    )


def write_report(out_url: str) -> str:
    """Write OUT/report.html from the tables; returns its location."""
    out = Output(out_url)
    if not out.has_table("clips"):
        raise FileNotFoundError(f"no tables in {out_url}: run the job first")
    out.write_text("report.html", render(out))
    return out.uri("report.html")
