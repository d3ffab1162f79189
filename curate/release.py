"""The released dataset: licence policy applied to clips, and the files that travel with the shards.

    OUT/index.json        every shard: samples, bytes, sha256, licences
    OUT/LICENSES.md       clips and hours per licence, with names and links
    OUT/ATTRIBUTION.csv   one row per source whose licence asks for attribution
    OUT/README.md         the data card: sources, filters and thresholds, counts per step, models, licences

`prepare_clips` runs before sharding (the policy and recorded takedowns decide which clips are kept);
`write_release` after (and again after every takedown). Everything here is deterministic: the same
tables give the same bytes.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import os
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from curate.layout import Layout
from curate.storage import Output
from schemas import SCHEMA_VERSION, TAKEDOWNS, ClipStatus, Reason
from stages.policy import LicencePolicy, PolicyConfig, alternatives

# Names of the licences people meet most; any other SPDX id is shown by its id, linked to spdx.org.
LICENSE_NAMES = {
    "CC0-1.0": "Creative Commons Zero v1.0 Universal",
    "PDDL-1.0": "Open Data Commons Public Domain Dedication & License 1.0",
    "CC-PDDC": "Creative Commons Public Domain Dedication and Certification",
    "CC-BY-3.0": "Creative Commons Attribution 3.0 Unported",
    "CC-BY-4.0": "Creative Commons Attribution 4.0 International",
    "CC-BY-SA-3.0": "Creative Commons Attribution Share Alike 3.0 Unported",
    "CC-BY-SA-4.0": "Creative Commons Attribution Share Alike 4.0 International",
    "CC-BY-NC-4.0": "Creative Commons Attribution Non Commercial 4.0 International",
    "CC-BY-ND-4.0": "Creative Commons Attribution No Derivatives 4.0 International",
    "CC-BY-NC-SA-4.0": "Creative Commons Attribution Non Commercial Share Alike 4.0 International",
    "MIT": "MIT License",
    "Apache-2.0": "Apache License 2.0",
    "BSD-2-Clause": 'BSD 2-Clause "Simplified" License',
    "BSD-3-Clause": 'BSD 3-Clause "New" or "Revised" License',
    "GPL-2.0-only": "GNU General Public License v2.0 only",
    "GPL-3.0-only": "GNU General Public License v3.0 only",
    "NOASSERTION": "no licence information",
}
ATTRIBUTION_COLUMNS = ["source_id", "title", "author", "source_url", "license", "attribution", "clips"]
OPT_OUT = "opted out (policy.opt_out)"


class TakedownError(ValueError):
    """A takedown request that matches no source, or an output folder that cannot take one."""


# ------------------------------------------------------------------------------------------ policy


def read_takedowns(out: Output) -> pa.Table:
    return out.read_table("takedowns") if out.has_table("takedowns") else TAKEDOWNS.empty_table()


def opt_out_entries(cfg: PolicyConfig) -> list[str]:
    entries = list(cfg.opt_out)
    if cfg.opt_out_file:
        import fsspec

        with fsspec.open(cfg.opt_out_file, "rt", encoding="utf-8") as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if line:
                    entries.append(line)
    return entries


def match_sources(sources: pa.Table, wanted: list[str]) -> dict[str, str]:
    """source_id -> the entry of `wanted` naming it, by source id, full sha256, uri, other name or source URL.
    (The rows that name one are found with Arrow compute; only those go through Python.)"""
    wanted_set = {w.strip() for w in wanted if w and w.strip()}
    found = {}
    if not wanted_set or not sources.num_rows:
        return found
    for row in sources.filter(_names_any(sources, wanted_set)).to_pylist():
        names = [row.get("source_id"), row.get("sha256"), row.get("uri"), row.get("source_url"), *(row.get("alias_uris") or [])]
        hit = next((n for n in names if n and n in wanted_set), None)
        if hit:
            found[row["source_id"]] = hit
    return found


def _names_any(sources: pa.Table, wanted: set[str]) -> pa.Array:
    """A mask: the rows of `sources` with a name (source id, sha256, uri, source URL, other uri) in `wanted`."""
    values = pa.array(sorted(wanted), pa.string())
    mask = pa.array([False] * sources.num_rows)
    for c in ("source_id", "sha256", "uri", "source_url"):
        if c in sources.column_names:
            mask = pc.or_(mask, pc.is_in(sources[c].combine_chunks().cast(pa.string()), value_set=values))
    if "alias_uris" in sources.column_names:
        lists = sources["alias_uris"].combine_chunks()
        hit = pc.is_in(pc.list_flatten(lists), value_set=values)
        rows = pc.unique(pc.filter(pc.list_parent_indices(lists), hit)).to_pylist()
        if rows:
            alias = [False] * sources.num_rows
            for i in rows:
                alias[i] = True
            mask = pc.or_(mask, pa.array(alias))
    return mask


def blocked_sources(cfg: PolicyConfig, sources: pa.Table, takedowns: pa.Table) -> dict[str, tuple[str, str]]:
    """source_id -> (reason, message) for every source opted out or taken down."""
    blocked = {sid: (Reason.LICENCE, f"{OPT_OUT}: {entry}") for sid, entry in match_sources(sources, opt_out_entries(cfg)).items()}
    for row in takedowns.to_pylist():
        blocked[row["source_id"]] = (Reason.TAKEDOWN, f"taken down {row['time']:%Y-%m-%dT%H:%M:%SZ}: {row.get('reason') or ''}".rstrip(": "))
    return blocked


def prepare_clips(clips: pa.Table, sources: pa.Table, cfg: PolicyConfig, out: Output) -> pa.Table:
    """Clips with their source's sha256, and kept clips outside the policy (or taken down) filtered."""
    sha = dict(zip(sources["source_id"].to_pylist(), sources["sha256"].to_pylist()))
    clips = clips.set_column(clips.schema.get_field_index("source_sha256"), "source_sha256",
                             pa.array([sha.get(s) for s in clips["source_id"].to_pylist()], pa.string()))
    return LicencePolicy(cfg, blocked_sources(cfg, sources, read_takedowns(out)))(clips)


def policy_of(job: dict) -> PolicyConfig:
    """The policy of a resolved job (OUT/job.yaml as plain data)."""
    from curate.config import from_dict

    return from_dict(PolicyConfig, job.get("policy") or {}, "policy")


def read_job(out: Output) -> dict:
    if not out.exists(Layout.JOB):
        raise FileNotFoundError(f"no job.yaml in output {out.url!r}; has the job run?")
    with out.fs.open(out.path(Layout.JOB), "rt", encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


# ------------------------------------------------------------------------------------------ files


IN_SHARDS = "status = 'kept' and shard is not null"  # a clip in the shards (SQL over the clips view)


def connect_tables(out: Output):
    """DuckDB over the output's tables (curate.catalog), one thread: sums of durations come out the same
    every time. The release files and the summary are aggregates of these views: no row reaches Python
    but one per licence, per source owed credit, per shard."""
    from curate.catalog import connect

    return connect(out.url, threads=1)


def license_link(key: str) -> str | None:
    if key == "NOASSERTION" or "LicenseRef-" in key:
        return None
    return f"https://spdx.org/licenses/{key}.html"


def index_json(shards: pa.Table, buckets: int | None = None) -> str:
    """Every shard with its counts, bytes, sha256 and licences; `buckets`: shards.buckets the clips were
    packed under (a clip's shard bucket is sha256(source_id) mod buckets), null for one sequence."""
    rows = sorted(shards.to_pylist(), key=lambda r: r["shard"])
    doc = {
        "schema_version": SCHEMA_VERSION,
        "buckets": buckets,
        "n_shards": len(rows),
        "n_samples": sum(r["n_samples"] for r in rows),
        "bytes": sum(r["bytes"] for r in rows),
        "shards": [{k: r[k] for k in ("shard", "n_samples", "bytes", "sha256", "licenses")} for r in rows],
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def per_licence(con) -> list[tuple[str, int, float]]:
    """(licence, clips, seconds) of the clips in the shards, by licence."""
    return con.execute(f"select coalesce(license, 'NOASSERTION'), count(*), coalesce(sum(coalesce(duration_s, 0)), 0) "
                       f"from clips where {IN_SHARDS} group by 1 order by 1").fetchall()


def licenses_md(con) -> str:
    """LICENSES.md: clips and hours in the shards per licence, with the licences' names and links."""
    per = per_licence(con)
    lines = ["# Licences", "", "Clips in the shards, per licence (SPDX expression). Every clip carries its licence in its `json`.", "",
             "| licence | clips | hours | licences in it |", "| --- | ---: | ---: | --- |"]
    for lic, n, seconds in per:
        keys = sorted({k for alt in alternatives(lic) for k in alt})
        names = "; ".join(f"[{LICENSE_NAMES.get(k, k)}]({license_link(k)})" if license_link(k) else LICENSE_NAMES.get(k, k) for k in keys)
        lines.append(f"| `{lic}` | {n} | {seconds / 3600:.4f} | {names} |")
    lines += ["", f"Total: {sum(n for _, n, _ in per)} clips, {sum(s for _, _, s in per) / 3600:.4f} hours.", ""]
    return "\n".join(lines)


def attribution_rows(con, policy: PolicyConfig, batch: int = 10_000):
    """One row per source in the shards whose licence asks for attribution, sorted by source_id (the credits
    of its first clip; they are its source's), streamed from DuckDB."""
    lp = LicencePolicy(policy)
    first = lambda c: f"first({c} order by start_frame, clip_id)"  # noqa: E731
    cur = con.execute(f"select source_id, {first('title')}, {first('author')}, {first('coalesce(source_url, source_uri)')}, "
                      f"{first('license')}, {first('attribution')}, count(*) from clips where {IN_SHARDS} group by source_id order by source_id")
    while rows := cur.fetchmany(batch):
        for sid, title, author, url, lic, attribution, n in rows:
            if lp.decide(lic, author, attribution).needs_attribution:
                yield {"source_id": sid, "title": title, "author": author, "source_url": url, "license": lic,
                       "attribution": attribution, "clips": n}


def attribution_csv(con, policy: PolicyConfig) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, ATTRIBUTION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in attribution_rows(con, policy):
        writer.writerow({k: "" if row[k] is None else row[k] for k in ATTRIBUTION_COLUMNS})
    return buf.getvalue()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _image_models(job: dict) -> list[tuple[str, str]]:
    """The watermark, OCR and NSFW models the job ran (the OCR and NSFW ones ship inside their PyPI
    wheels; the watermark detector inside curate): versions and file hashes."""
    rows = []
    files = lambda info: ", ".join(f"`{f}` (sha256 {h}…)" for f, h in info["files"].items())  # noqa: E731
    wm = job.get("watermark")
    if wm and wm.get("method", "both") in ("both", "net"):
        from stages.text import file_sha256
        from stages.watermark_net import NET_FILE, provenance

        path = wm.get("net_weights") or NET_FILE
        info = provenance(path)
        made = "no provenance recorded"
        if info:
            members = info.get("members") or []
            trained = (f"the mean of {len(members)} networks trained by " + ", ".join(f"`{m['made_by']}`" for m in members)
                       + f" (joined by `{info['made_by']}`, {info['date']})") if members else f"trained by `{info['made_by']}` ({info['date']})"
            made = (f"{trained} on synthetic overlays ({info['overlays']}) over {len(info['footage']['videos'])} real test videos; "
                    f"calibration ROC AUC {info['calibration']['roc_auc']}")
            if info.get("unseen_footage"):
                made += f"; on videos it was not trained over: {info['unseen_footage']}"
        rows.append(("watermark (watermark_score, watermark_box)",
                     f"curate's learned overlay detector `{os.path.basename(path)}` (sha256 {file_sha256(path)[:16]}…), {made}"
                     + ("; with the weight-free `edges` detector beside it (stages/watermark.py; the higher score counts, and where both point at the same place their logits add up)"
                        if wm.get("method", "both") == "both" else "")))
    elif wm:
        rows.append(("watermark (watermark_score, watermark_box)", f"curate's `{wm.get('method')}` method (stages/watermark.py)"))
    if job.get("text"):
        from stages.text import model_info

        info, what = model_info(), "detection + recognition" if job["text"].get("recognize", True) else "detection"
        rows.append(("burned-in text (text_area, text_frames, text_static, ocr_text)",
                     f"PP-OCRv6 small {what} from {info['package']} on {info['runtime']}: {files(info)}; licence {info['license']}"))
    if wm and wm.get("method", "both") != "classifier" and wm.get("mean_words", True):
        from stages.text import model_info
        from stages.watermark import WatermarkConfig

        info = model_info()
        rows.append(("watermark, words on the mean frame (watermark_score)",
                     f"PP-OCRv6 small detection + recognition from {info['package']} on {info['runtime']}, on the mean of the sampled frames "
                     f"(longer side {wm.get('mean_words_size', WatermarkConfig.mean_words_size)} px): "
                     f"{files(info)}; licence {info['license']}"))
    if job.get("nsfw"):
        from stages.nsfw import model_info

        info = model_info()
        classes = ", ".join(job["nsfw"].get("classes") or [])
        rows.append(("NSFW (nsfw_score, nsfw_labels)", f"NudeNet detector from {info['package']} on {info['runtime']}: "
                     f"{files(info)}; licence {info['license']}; nsfw_score counts {classes}"))
    return rows


def data_card(job: dict, con) -> str:
    """The dataset's README.md: what went in, what was kept and why, with which models, under which licences."""
    one = lambda sql: con.execute(sql).fetchone()  # noqa: E731
    n_src, n_ok, ok_s = one("select count(*), count(*) filter (where status = 'ok'), coalesce(sum(duration_s) filter (where status = 'ok'), 0) from sources")
    n_clips, n_in, in_s, in_sources = one(f"select count(*), count(*) filter (where {IN_SHARDS}), "
                                          f"coalesce(sum(coalesce(duration_s, 0)) filter (where {IN_SHARDS}), 0), "
                                          f"count(distinct source_id) filter (where {IN_SHARDS}) from clips")
    n_shards = one("select count(*) from shards")[0]

    out = [f"# {job.get('name') or 'curate'}: a video clip dataset", "",
           "Made by curate. WebDataset shards under `shards/` (listed in `index.json` with sha256); each sample is "
           "`mp4` (the clip), `json` (its metadata: licence, attribution, source URI and sha256, frame range, scores, caption model), "
           "`txt` (the caption, when made) and `latent.npy` (+ `latent_logvar.npy`) and `text_emb.npy` / `text_mask.npy` when made. "
           "Licences: `LICENSES.md`; credits owed: `ATTRIBUTION.csv`. Check with `curate verify OUT`.", "",
           "## Sources", "",
           f"{n_src} input files, {n_ok} readable ({ok_s / 3600:.4f} hours); {in_sources} sources have clips in the shards.", ""]
    errors = con.execute("select coalesce(reason, ''), count(*) from sources where status != 'ok' group by 1 order by 1").fetchall()
    if errors:
        out += ["Unreadable inputs: " + ", ".join(f"{r} {n}" for r, n in errors) + ".", ""]

    out += ["## Counts surviving each step", "", "| step | count |", "| --- | ---: |",
            f"| input files | {n_src} |", f"| sources ok | {n_ok} |", f"| clip windows | {n_clips} |"]
    by_reason = {(st, r): n for st, r, n in con.execute("select status, coalesce(reason, ''), count(*) from clips group by 1, 2").fetchall()}
    kept = n_clips
    # in the order the steps run: the split's reasons first, the policy's last, score filters between
    step = {Reason.ENCODE_ERROR: 0, Reason.TOO_SHORT: 1, Reason.DUPLICATE: 6, Reason.LICENCE: 8, Reason.TAKEDOWN: 9}
    for (status, reason), n in sorted(by_reason.items(), key=lambda kv: (kv[0][0] == ClipStatus.KEPT, step.get(kv[0][1], 5), kv[0])):
        if status != ClipStatus.KEPT:
            kept -= n
            out.append(f"| after removing {status} `{reason}` ({n}) | {kept} |")
    out += [f"| in shards | {n_in} clips, {in_s / 3600:.4f} hours, {n_shards} shards |", ""]
    dups = by_reason.get((ClipStatus.FILTERED, Reason.DUPLICATE), 0)
    out += [f"Near-duplicates: dedup removed {dups} clips (each a copy of a better clip of this run or of an earlier "
            "output, named in `duplicate_of`).", ""]

    settings = {k: v for k, v in job.items() if k not in ("input", "output", "ray", "name")}
    out += ["## Filters and thresholds", "", "The job's settings (from `job.yaml`):", "", "```yaml",
            yaml.safe_dump(settings, sort_keys=False).rstrip(), "```", ""]

    models = [("shot detection", f"PySceneDetect {_version('scenedetect')} ({(job.get('split') or {}).get('detector', '?')} detector)"),
              ("clip encoding", f"ffmpeg via PyAV {_version('av')} / ffmpeg-python; codec {((job.get('split') or {}).get('encode') or {}).get('codec', '?')}"),
              ("shards", f"webdataset {_version('webdataset')}")]
    columns = [r[0] for r in con.execute("select column_name from (describe clips)").fetchall()]
    for column in sorted(c for c in columns if c.endswith("_model") or c in ("vae_id", "model_id")):
        for (value,) in con.execute(f'select distinct "{column}" from clips where "{column}" is not null and "{column}" != \'\' order by 1').fetchall():
            models.append((column, value))
    models += _image_models(job)
    out += ["## Models and tools", "", "| role | model / version |", "| --- | --- |", *(f"| {r} | {m} |" for r, m in models), ""]

    out += ["## Licences", "", "| licence | clips | hours |", "| --- | ---: | ---: |"]
    out += [f"| `{lic}` | {n} | {seconds / 3600:.4f} |" for lic, n, seconds in per_licence(con)]
    out += ["", "Details and links in `LICENSES.md`; attribution rows in `ATTRIBUTION.csv`.", ""]

    takedowns = con.execute("select time, source_id, reason, clips_removed from takedowns order by time, source_id").fetchall()
    if takedowns:
        out += ["## Takedowns", "", "| time (UTC) | source | reason | clips removed |", "| --- | --- | --- | ---: |"]
        for time, sid, reason, removed in takedowns:
            out.append(f"| {time:%Y-%m-%d %H:%M:%S} | `{sid}` | {reason or ''} | {removed} |")
        out.append("")
    return "\n".join(out)


def write_release(out: Output, job: dict) -> None:
    """Write index.json, LICENSES.md, ATTRIBUTION.csv and README.md from the output's tables (DuckDB
    aggregates: no clip row is held in Python); remove shard files no table row names, and the clip
    files of taken-down sources."""
    policy = policy_of(job)
    con = connect_tables(out)
    try:
        shards = con.sql("select * from shards order by shard").to_arrow_table()
        out.write_text(Layout.INDEX, index_json(shards, (job.get("shards") or {}).get("buckets")))
        out.write_text(Layout.LICENSES, licenses_md(con))
        out.write_text(Layout.ATTRIBUTION, attribution_csv(con, policy))
        out.write_text(Layout.CARD, data_card(job, con))
        remove_stray_shards(out, shards)
        # The clip files of a taken-down source go too: no byte of it stays in the output.
        cur = con.execute("select clip_uri from clips where clip_uri is not null and source_id in (select source_id from takedowns) order by 1")
        while rows := cur.fetchmany(10_000):
            for (uri,) in rows:
                _remove_uri(uri)
    finally:
        con.close()


def shard_files(out: Output) -> list[str]:
    """Every .tar under OUT/shards, as paths relative to OUT, sorted."""
    if not out.exists(Layout.SHARDS):
        return []
    root = out.path("")
    return sorted(posixpath.relpath(p, root) for p in out.fs.find(out.path(Layout.SHARDS)) if p.endswith(".tar"))


def remove_stray_shards(out: Output, shards: pa.Table) -> None:
    named = set(shards["shard"].to_pylist())
    for rel in shard_files(out):
        if rel not in named:
            out.fs.rm(out.path(rel))


def _remove_uri(uri: str) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path)
