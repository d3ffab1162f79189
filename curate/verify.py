"""`curate verify OUT`: re-read every shard and check it against the tables, the index and the policy.

Each problem is one line naming the shard (and sample) it concerns; an empty list means the output
is what its tables say: every tar's sha256 and size, every sample's keys and json, every sample's
licence under the job's policy (OUT/job.yaml), no opted-out or taken-down source, an attribution row
for every source that needs one, and no shard file that the tables do not name.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile

from curate.layout import Layout
from curate.release import (
    blocked_sources,
    policy_of,
    read_job,
    read_takedowns,
    shard_files,
)
from curate.storage import Output
from schemas import ClipStatus
from stages.policy import LicencePolicy
from stages.shards import SAMPLE_FILES, TAR_MODE, TAR_MTIME, TAR_USER, clip_metadata

REQUIRED = {"mp4", "json"}
KNOWN = REQUIRED | {"txt"} | set(SAMPLE_FILES.values())


def verify(out_url: str) -> list[str]:
    """Every problem found in the output folder `out_url`, one line each; [] when it checks out."""
    out = Output(out_url)
    job = read_job(out)
    policy = policy_of(job)
    sources, clips, shards = (out.read_table(t) for t in ("sources", "clips", "shards"))
    lp = LicencePolicy(policy)
    blocked = blocked_sources(policy, sources, read_takedowns(out))
    problems: list[str] = []

    table = {r["shard"]: r for r in shards.to_pylist()}
    kept = {r["clip_id"]: r for r in clips.to_pylist() if r["status"] == ClipStatus.KEPT and r["shard"]}
    for r in clips.to_pylist():
        if r["status"] != ClipStatus.KEPT and r["shard"]:
            problems.append(f"clips: {r['clip_id']} is {r['status']} ({r['reason']}) but names shard {r['shard']}")
        if r["status"] == ClipStatus.KEPT and r["shard"] and r["shard"] not in table:
            problems.append(f"clips: {r['clip_id']} names shard {r['shard']}, which the shards table does not list")

    # index.json agrees with the shards table
    if not out.exists(Layout.INDEX):
        problems.append("index.json: missing")
    else:
        with out.fs.open(out.path(Layout.INDEX), "rt", encoding="utf-8") as f:
            index = {s["shard"]: s for s in json.load(f).get("shards", [])}
        for name in sorted(set(index) | set(table)):
            a, b = index.get(name), table.get(name)
            if a is None or b is None:
                problems.append(f"index.json: {name} is {'missing' if a is None else 'listed'} there but {'listed' if b is not None else 'missing'} in the shards table")
            elif any(a[k] != b[k] for k in ("n_samples", "bytes", "sha256")):
                problems.append(f"index.json: {name} differs from the shards table (n_samples, bytes or sha256)")

    for rel in shard_files(out):
        if rel not in table:
            problems.append(f"{rel}: a shard file that the shards table does not list")

    seen: set[str] = set()
    for name, row in sorted(table.items()):
        problems += _check_shard(out, name, row, kept, lp, blocked, seen)

    # clips inherit licence and hash from their source: the two tables agree
    by_source = {r["source_id"]: r for r in sources.to_pylist()}
    for clip_id in sorted(seen):
        clip, src = kept[clip_id], by_source.get(kept[clip_id]["source_id"])
        if src is None:
            problems.append(f"{clip['shard']}: sample {clip_id}: source {clip['source_id']} is not in the sources table")
        elif (clip["license"], clip["source_sha256"]) != (src["license"], src["sha256"]):
            problems.append(f"{clip['shard']}: sample {clip_id}: licence or source_sha256 differs from source {src['source_id']} in the sources table")

    for clip_id in sorted(set(kept) - seen):
        problems.append(f"clips: {clip_id} is kept in {kept[clip_id]['shard']} but no shard holds it")

    # attribution rows for every source that needs one
    needed = {}
    for clip_id in seen & set(kept):
        r = kept[clip_id]
        if lp.decide(r["license"], r.get("author"), r.get("attribution")).needs_attribution:
            needed[r["source_id"]] = r["license"]
    listed = set()
    if out.exists(Layout.ATTRIBUTION):
        with out.fs.open(out.path(Layout.ATTRIBUTION), "rt", encoding="utf-8") as f:
            listed = {r["source_id"] for r in csv.DictReader(f)}
    elif needed:
        problems.append("ATTRIBUTION.csv: missing")
    for sid in sorted(set(needed) - listed):
        problems.append(f"ATTRIBUTION.csv: source {sid} ({needed[sid]}) is in the shards but has no attribution row")
    return problems


def _check_shard(out: Output, name: str, row: dict, kept: dict, lp: LicencePolicy, blocked: dict, seen: set) -> list[str]:
    if not out.exists(name):
        return [f"{name}: missing (the shards table lists it)"]
    with out.fs.open(out.path(name), "rb") as f:
        data = f.read()
    problems = []
    sha = hashlib.sha256(data).hexdigest()
    if sha != row["sha256"] or len(data) != row["bytes"]:
        problems.append(f"{name}: sha256 {sha[:12]}… ({len(data)} bytes) differs from the shards table ({row['sha256'][:12]}…, {row['bytes']} bytes): the file was changed")

    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    problems.append(f"{name}: member {member.name!r} is not a regular file")
                    continue
                if (member.mtime, member.mode, member.uname, member.gname) != (TAR_MTIME, TAR_MODE, TAR_USER, TAR_USER):
                    problems.append(f"{name}: member {member.name!r} has mtime/mode/owner {member.mtime}/{oct(member.mode)}/{member.uname}, "
                                    f"not the fixed {TAR_MTIME}/{oct(TAR_MODE)}/{TAR_USER} (not written by curate)")
                key, dot, ext = member.name.partition(".")
                if not dot or "/" in member.name:
                    problems.append(f"{name}: member {member.name!r} is not <key>.<ext>")
                    continue
                files = samples.setdefault(key, {})
                if ext in files:
                    problems.append(f"{name}: {key} has two {ext} files")
                files[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError) as e:
        return problems + [f"{name}: not a readable tar ({e})"]

    if len(samples) != row["n_samples"]:
        problems.append(f"{name}: {len(samples)} samples, the shards table says {row['n_samples']}")
    licenses = set()
    for key, files in samples.items():
        where = f"{name}: sample {key}"
        missing, unknown = REQUIRED - set(files), set(files) - KNOWN
        if missing:
            problems.append(f"{where}: missing {', '.join(sorted(missing))}")
        if unknown:
            problems.append(f"{where}: unexpected files {', '.join(sorted(unknown))}")
        clip = kept.get(key)
        if clip is None or clip["shard"] != name:
            problems.append(f"{where}: not a kept clip of this shard in the clips table")
        else:
            seen.add(key)
        try:
            meta = json.loads(files["json"]) if "json" in files else None
        except ValueError:
            problems.append(f"{where}: json does not parse")
            meta = None
        if meta is None:
            continue
        licenses.add(meta.get("license"))
        decision = lp.decide(meta.get("license"), meta.get("author"), meta.get("attribution"))
        if not decision.allowed:
            problems.append(f"{where}: {decision.why}")
        if meta.get("source_id") in blocked:
            problems.append(f"{where}: source {meta['source_id']} must not be in the shards ({blocked[meta['source_id']][1]})")
        if clip is not None:
            expected = json.loads(json.dumps(clip_metadata(clip), default=str))
            diff = sorted(k for k in set(meta) | set(expected) if meta.get(k) != expected.get(k))
            if diff:
                problems.append(f"{where}: json disagrees with the clips table on {', '.join(diff)}")
            if ("txt" in files) != (clip.get("caption") is not None) or ("txt" in files and files["txt"].decode("utf-8", "replace") != clip["caption"]):
                problems.append(f"{where}: txt disagrees with the clips table's caption")
    if sorted(lic for lic in licenses if lic is not None) != sorted(row.get("licenses") or []):
        problems.append(f"{name}: licences {sorted(lic for lic in licenses if lic)} differ from the shards table's {row.get('licenses')}")
    return problems
