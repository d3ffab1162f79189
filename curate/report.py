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
import yaml

from curate.layout import Layout
from curate.release import connect_tables
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


DUPLICATE_GROUPS = 200  # groups listed in the report's data (the largest first); the count is of all


def _columns(con) -> dict[str, str]:
    return {name: kind for name, kind, *_ in con.execute("select column_name, column_type from (describe clips)").fetchall()}


def gather(out: Output, con=None) -> dict:
    """Every number the report shows: DuckDB aggregates over the tables (no row is held in Python but
    one per group shown)."""
    con = con or connect_tables(out)
    one = lambda sql: con.execute(sql).fetchone()  # noqa: E731
    h = lambda s: float(s or 0.0) / 3600  # noqa: E731
    ok_n, ok_s = one(f"select count(*), sum(duration_s) from sources where status = '{SourceStatus.OK}'")
    sc_n, sc_s = one("select count(*), sum(end_s - start_s) from scenes")
    kept = f"status = '{ClipStatus.KEPT}'"
    counts = one(f"select count(*), sum(duration_s), count(*) filter (where {kept}), sum(duration_s) filter (where {kept}), "
                 f"count(*) filter (where {kept} and caption is not null and caption != ''), "
                 f"sum(duration_s) filter (where {kept} and caption is not null and caption != ''), "
                 f"count(*) filter (where shard is not null and shard != ''), sum(duration_s) filter (where shard is not null and shard != '') from clips")
    funnel = [
        {"step": "sources", "count": ok_n, "hours": h(ok_s)},
        {"step": "scenes", "count": sc_n, "hours": h(sc_s)},
        {"step": "clips", "count": counts[0], "hours": h(counts[1])},
        {"step": "kept", "count": counts[2], "hours": h(counts[3])},
        {"step": "captioned", "count": counts[4], "hours": h(counts[5])},
        {"step": "sharded", "count": counts[6], "hours": h(counts[7])},
    ]
    errors = []
    for table, uri, good in (("sources", "uri", SourceStatus.OK), ("clips", "source_uri", ClipStatus.KEPT)):
        order = "source_id" if table == "sources" else "source_id, start_frame, clip_id"
        for status, reason, n, example, where in con.execute(
                f"select status, reason, count(*), first(error order by {order}), first({uri} order by {order}) from {table} "
                f"where status != '{good}' group by status, reason").fetchall():
            errors.append({"table": table, "status": status, "reason": reason, "count": n, "example": example or "", "uri": where})
    licences = [{"license": lic, "clips": n, "hours": h(sec)} for lic, n, sec in con.execute(
        f"select coalesce(license, 'NOASSERTION'), count(*), sum(coalesce(duration_s, 0)) from clips where {kept} group by 1").fetchall()]
    summary = json.loads(out.fs.cat(out.path(Layout.SUMMARY))) if out.exists(Layout.SUMMARY) else {}
    camera = dict(con.execute(f"select camera_motion, count(*) from clips where {kept} and camera_motion is not null and camera_motion != '' "
                              "group by 1 order by 1").fetchall())
    n_groups = one("select count(distinct duplicate_of) from clips where duplicate_of is not null and duplicate_of != ''")[0]
    groups = {rep: list(members) for rep, members in con.execute(
        "select duplicate_of, list(clip_id order by clip_id) from clips where duplicate_of is not null and duplicate_of != '' "
        f"group by 1 order by count(*) desc, 1 limit {DUPLICATE_GROUPS}").fetchall()}
    columns = _columns(con)
    return {
        "camera_motion": camera,  # kept clips per camera_motion label
        # representative -> its duplicates filtered in this run (the representative may be of an earlier output):
        # the largest DUPLICATE_GROUPS groups; duplicate_group_count counts them all
        "duplicate_groups": dict(sorted(groups.items())),
        "duplicate_group_count": n_groups,
        "funnel": funnel,
        "errors": sorted(errors, key=lambda e: (-e["count"], e["table"], str(e["reason"]))),
        "licenses": sorted(licences, key=lambda e: (-e["clips"], e["license"])),
        "stage_s": summary.get("stage_s", {}),
        "score_columns": [c for c, kind in columns.items() if kind in ("FLOAT", "DOUBLE") and (c.endswith("_score") or c in SCORES_TOO)],
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
    lo, hi = _range(float(vals.min()), float(vals.max()), marks)
    counts, _ = np.histogram(vals, bins=bins, range=(lo, hi))
    return _histogram(counts.tolist(), lo, hi, int(vals.size), marks, width, height)


def _range(lo: float, hi: float, marks: list[Threshold]) -> tuple[float, float]:
    for m in marks:
        lo, hi = min(lo, m.value), max(hi, m.value)
    return (lo, lo + 1.0) if hi <= lo else (lo, hi)


def histogram_sql(con, column: str, marks: list[Threshold], bins: int = 20, **size) -> str:
    """histogram_svg of a clips column, binned by DuckDB (the values never leave it)."""
    col = f'"{column}"'
    finite = f"{col} is not null and isfinite({col})"
    n, lo, hi = con.execute(f"select count(*), min({col}), max({col}) from clips where {finite}").fetchone()
    if not n:
        return "<p class=muted>no values</p>"
    lo, hi = _range(float(lo), float(hi), marks)
    counts = [0] * bins
    for k, c in con.execute(f"select least({bins - 1}, floor(({col} - {lo!r}) / ({hi!r} - {lo!r}) * {bins}))::int, count(*) "
                            f"from clips where {finite} group by 1").fetchall():
        counts[max(0, k)] += c
    return _histogram(counts, lo, hi, int(n), marks, **size)


def _histogram(counts: list[int], lo: float, hi: float, n: int, marks: list[Threshold], width: int = 420, height: int = 140) -> str:
    bins = len(counts)
    edges = np.linspace(lo, hi, bins + 1)
    top = max(1, max(counts))
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
    parts.append(f'<text x="{width / 2}" y="{height + 28}" font-size="11" text-anchor="middle">n = {n}</text></svg>')
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


GALLERY_COLUMNS = ("clip_id", "clip_uri", "status", "reason", "duration_s", "caption")
ORDER = "source_id, start_frame, clip_id"


def _rows(con, where: str, order: str, scores: list[str], limit: int = GALLERY_SIZE) -> list[dict]:
    cols = ", ".join(f'"{c}"' for c in (*GALLERY_COLUMNS, *scores))
    cur = con.execute(f"select {cols} from clips where {where} order by {order} limit {int(limit)}")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def render(out: Output) -> str:
    con = connect_tables(out)
    try:
        return _render(out, con)
    finally:
        con.close()


def _render(out: Output, con) -> str:
    data = gather(out, con)
    job = yaml.safe_load(out.fs.cat(out.path(Layout.JOB))) if out.exists(Layout.JOB) else {}
    marks = thresholds(job)
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
            hists.append(f"<div><h3>{col}</h3>{histogram_sql(con, col, mine)}</div>")
        parts.append(f"<div class=hists>{''.join(hists)}</div>")
    else:
        parts.append("<p class=muted>No score columns in this run.</p>")

    parts.append("<h2>Clips</h2>")
    kept_where = f"status = '{ClipStatus.KEPT}'"
    n_kept = next(f["count"] for f in data["funnel"] if f["step"] == "kept")
    step = max(1, n_kept // GALLERY_SIZE)  # every step-th kept clip, in table order
    sample = _rows(con, f"clip_id in (select clip_id from (select clip_id, row_number() over (order by {ORDER}) - 1 as i from clips "
                        f"where {kept_where}) where i % {step} = 0)", ORDER, scores)
    parts.append(_gallery(f"Kept ({n_kept})", sample, scores))
    columns = _columns(con)
    for m in marks:
        col, passes = f'"{m.column}"', f'"{m.column}" {m.op} {m.value!r}'
        near = f"abs({col} - {m.value!r}), {ORDER}"
        known = m.column in columns  # a predicate may name a column this run does not have: empty galleries
        below = _rows(con, f"{col} is not null and not ({passes})", near, scores) if known else []
        above = _rows(con, f"{col} is not null and {passes}", near, scores) if known else []
        parts.append(_gallery(f"Rejected just past {m}", below, scores))
        parts.append(_gallery(f"Passing just inside {m} (each card shows its status)", above, scores))

    if data["camera_motion"]:
        parts.append("<h2>Camera motion (kept clips)</h2>")
        parts.append(_table(["camera_motion", "clips"], [[k, v] for k, v in data["camera_motion"].items()]))
    if data["duplicate_groups"]:
        groups = data["duplicate_groups"]
        n_dups = con.execute("select count(*) from clips where duplicate_of is not null and duplicate_of != ''").fetchone()[0]
        parts.append(f"<h2>Near-duplicates ({data['duplicate_group_count']} groups, {n_dups} clips filtered)</h2>")
        for rep_id, dups in list(groups.items())[:GALLERY_SIZE]:
            ids = [rep_id, *dups]
            found = {r["clip_id"]: r for r in _rows(con, f"clip_id in ({', '.join(_quote(i) for i in ids)})", "clip_id", scores, len(ids))}
            members = [found[c] for c in ids if c in found]  # the representative is absent when it is of an earlier output
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
    out.write_text(Layout.REPORT, render(out))
    return out.uri(Layout.REPORT)
