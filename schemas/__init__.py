"""Data contracts of curate: the Arrow schemas of every table, status and reason codes.

Every stage reads and writes Arrow tables whose columns are declared here; `curate` writes them as
Parquet and DuckDB exposes them as views of the same names. Imports pyarrow only.

Frame numbers are 0-based indices in decode order: `start_frame` inclusive, `end_frame` exclusive.
Seconds are presentation timestamps measured from the source's first frame:

    decode index   0     1     2     3   ...   n-1
    pts (stream)   t0    t1    t2    t3        t(n-1)
    *_s columns    0   t1-t0 t2-t0  ...        t(n-1)-t0      end_s of the last frame = t(n-1)-t0 + its duration
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1


class SourceStatus:
    OK = "ok"
    ERROR = "error"


class ClipStatus:
    KEPT = "kept"
    FILTERED = "filtered"
    ERROR = "error"


class Reason:
    """Reason codes. A row whose status is not `ok`/`kept` names one of these in `reason`."""

    # sources
    MISSING = "missing"  # the uri does not exist
    UNREADABLE = "unreadable"  # exists but cannot be read (permissions, a folder, I/O error)
    EMPTY = "empty_file"  # zero bytes
    NOT_MEDIA = "not_media"  # the container cannot be opened (not a video, no moov atom, ...)
    NO_VIDEO = "no_video_stream"  # a media file without a video stream (audio only)
    DECODE_ERROR = "decode_error"  # opened, but decoding failed
    NO_FRAMES = "no_frames"  # opened, but not one frame decodes
    TRUNCATED = "truncated"  # an mp4 without its index, or fewer frames decode than the container declares
    BAD_MANIFEST_ROW = "bad_manifest_row"
    # clips
    TOO_SHORT = "too_short"  # the scene is shorter than split.min_clip_s
    ENCODE_ERROR = "encode_error"  # ffmpeg failed writing the clip
    BLANK = "blank"  # black or nearly constant frames (split.blank_max_std)
    TRANSITION = "transition"  # a fade or dissolve, with split.transition_margin_s on each side


_ATTRIBUTION = [
    pa.field("title", pa.string()),
    pa.field("author", pa.string()),
    pa.field("source_url", pa.string()),
    pa.field("attribution", pa.string()),
]

SOURCES = pa.schema(
    [
        pa.field("source_id", pa.string(), nullable=False),  # sha256 of the bytes, first 16 hex
        pa.field("uri", pa.string(), nullable=False),
        pa.field("alias_uris", pa.list_(pa.string())),  # other names of the same bytes
        pa.field("sha256", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("license", pa.string()),  # SPDX id; NOASSERTION when unknown
        pa.field("license_raw", pa.string()),  # as the input gave it
        *_ATTRIBUTION,
        pa.field("container", pa.string()),
        pa.field("codec", pa.string()),
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),  # average frame rate
        pa.field("n_frames", pa.int64()),  # frames decoded by the split (the container's count before)
        pa.field("width", pa.int32()),  # displayed, after rotation
        pa.field("height", pa.int32()),
        pa.field("rotation", pa.int32()),  # display-matrix rotation in degrees (counter-clockwise), as ffmpeg reports it
        pa.field("vfr", pa.bool_()),  # variable frame rate
        pa.field("stream_start_s", pa.float64()),  # the video stream's start time
        pa.field("has_audio", pa.bool_()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("error", pa.string()),
    ],
    metadata={"curate.schema_version": str(SCHEMA_VERSION), "curate.table": "sources"},
)

SCENE_FIELDS = [
    pa.field("scene_index", pa.int32()),
    pa.field("start_frame", pa.int64()),
    pa.field("end_frame", pa.int64()),
    pa.field("start_s", pa.float64()),
    pa.field("end_s", pa.float64()),
]

SCENES = pa.schema(
    [pa.field("source_id", pa.string(), nullable=False), *SCENE_FIELDS],
    metadata={"curate.schema_version": str(SCHEMA_VERSION), "curate.table": "scenes"},
)

# What the split makes of one source, before the plan flattens it into `clips`.
CLIP_WINDOW_FIELDS = [
    pa.field("clip_id", pa.string()),
    *SCENE_FIELDS,
    pa.field("duration_s", pa.float64()),
    pa.field("clip_uri", pa.string()),
    pa.field("clip_bytes", pa.int64()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("status", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("error", pa.string()),
]

CLIPS = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        *SCENE_FIELDS,
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("clip_uri", pa.string()),
        pa.field("clip_bytes", pa.int64()),
        pa.field("license", pa.string()),
        *_ATTRIBUTION,
        pa.field("source_uri", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("error", pa.string()),
        pa.field("shard", pa.string()),  # path of the shard holding the clip, relative to the output
    ],
    metadata={"curate.schema_version": str(SCHEMA_VERSION), "curate.table": "clips"},
)

SHARDS = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),  # path relative to the output folder
        pa.field("n_samples", pa.int64()),
        pa.field("bytes", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("licenses", pa.list_(pa.string())),
    ],
    metadata={"curate.schema_version": str(SCHEMA_VERSION), "curate.table": "shards"},
)

TABLES: dict[str, pa.Schema] = {"sources": SOURCES, "scenes": SCENES, "clips": CLIPS, "shards": SHARDS}


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast `table`'s columns to `schema`; missing nullable columns become nulls.

    Raises KeyError naming a missing non-nullable column.
    """
    cols = []
    for f in schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        elif f.nullable:
            cols.append(pa.nulls(table.num_rows, f.type))
        else:
            raise KeyError(f"column {f.name!r} is required by table {schema.metadata.get(b'curate.table')!r}")
    return pa.Table.from_arrays(cols, schema=schema)
