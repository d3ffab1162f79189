"""Ingest: one SOURCES row per input file: content hash, licence as an SPDX id, PyAV probe.

A file that cannot be read, opened or decoded still gets its row, with status `error`, a reason code
and the message, so the job goes on and nothing disappears. The same bytes under two names are one
source: `fold_duplicates` keeps the first name and lists the others in `alias_uris`.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import pyarrow as pa

from schemas import SOURCES, Reason, SourceStatus
from stages.media import MediaError, hash_file, local_copy, probe

NOASSERTION = "NOASSERTION"  # SPDX's word for "no licence information"
INPUT_COLUMNS = ("uri", "license", "title", "author", "source_url", "attribution")

_ALIASES = {
    "cc0": "CC0-1.0",
    "cc-0": "CC0-1.0",
    "cc-zero": "CC0-1.0",
    "public-domain": "CC-PDDC",
    "apache2": "Apache-2.0",
    "apache-2": "Apache-2.0",
}
_LICENSE_REF = re.compile(r"^(DocumentRef-[A-Za-z0-9.-]+:)?LicenseRef-[A-Za-z0-9.-]+$")


@lru_cache(maxsize=1)
def spdx_licensing():
    """license_expression's SPDX licensing, built once per process (building it reads and indexes the
    whole SPDX list: about 50 ms)."""
    from license_expression import get_spdx_licensing

    return get_spdx_licensing()


def normalize_license(raw: str | None) -> str:
    """An SPDX license expression for `raw` ("cc-by-4.0", "CC BY 4.0", "MIT OR Apache-2.0", ...).

    Returns NOASSERTION for empty or unrecognised input; the job's policy decides what that means.
    """
    if raw is None or not str(raw).strip():
        return NOASSERTION
    return _normalize(str(raw).strip())


@lru_cache(maxsize=4096)
def _normalize(text: str) -> str:
    if _LICENSE_REF.match(text) or text == NOASSERTION:
        return text
    licensing = spdx_licensing()
    dashed = re.sub(r"\s+", "-", text)
    for candidate in (text, dashed, _ALIASES.get(dashed.lower(), "")):
        if candidate:
            info = licensing.validate(candidate)
            if info.normalized_expression and not info.errors:
                return info.normalized_expression
    return NOASSERTION


def source_id_for(sha256: str) -> str:
    return sha256[:16]


def _error_row(row: dict, reason: str, message: str, sha: str | None = None, size: int | None = None) -> dict:
    sid = source_id_for(sha or hashlib.sha256(("uri:" + row["uri"]).encode()).hexdigest())
    return {**row, "source_id": sid, "sha256": sha, "size_bytes": size, "status": SourceStatus.ERROR, "reason": reason, "error": message}


def ingest_one(row: dict) -> dict:
    row = {k: row.get(k) for k in INPUT_COLUMNS}
    row["license_raw"] = row["license"]
    row["license"] = normalize_license(row["license"])
    if not row["uri"]:
        row["uri"] = ""
        return _error_row(row, Reason.BAD_MANIFEST_ROW, "the row has no uri")
    try:
        sha, size = hash_file(row["uri"])
    except MediaError as e:
        return _error_row(row, e.reason, str(e))
    try:
        with local_copy(row["uri"]) as path:
            p = probe(path)
    except MediaError as e:
        return _error_row(row, e.reason, str(e), sha, size)
    except OSError as e:
        return _error_row(row, Reason.UNREADABLE, str(e), sha, size)
    return {
        **row,
        "source_id": source_id_for(sha),
        "sha256": sha,
        "size_bytes": size,
        "container": p.container,
        "codec": p.codec,
        "duration_s": p.duration_s,
        "fps": p.fps,
        "n_frames": p.n_frames,
        "width": p.width,
        "height": p.height,
        "rotation": p.rotation,
        "vfr": p.vfr,
        "stream_start_s": p.stream_start_s,
        "has_audio": p.has_audio,
        "status": SourceStatus.OK,
        "reason": None,
        "error": None,
    }


class Ingest:
    """Input rows (uri, license, title, author, source_url, attribution) -> SOURCES rows."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([ingest_one(r) for r in batch.to_pylist()], schema=SOURCES)


def fold_duplicates(sources: pa.Table) -> pa.Table:
    """One row per source_id, sorted by it: the first uri (sorted) stays, the others go to `alias_uris`.

    Attribution fields (title, author, source_url, attribution) the first row lacks are taken from
    the others, in uri order; the licence is the first row's.
    """
    by_id: dict[str, list[dict]] = {}
    for row in sorted(sources.to_pylist(), key=lambda r: r["uri"]):
        by_id.setdefault(row["source_id"], []).append(row)
    rows = []
    for sid in sorted(by_id):
        first, *rest = by_id[sid]
        first["alias_uris"] = [r["uri"] for r in rest] + list(first.get("alias_uris") or [])
        for field in ("title", "author", "source_url", "attribution"):  # credits given under another name count
            if not first.get(field):
                first[field] = next((r[field] for r in rest if r.get(field)), first.get(field))
        rows.append(first)
    return pa.Table.from_pylist(rows, schema=SOURCES)
