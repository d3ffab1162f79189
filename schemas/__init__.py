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
    UNSUPPORTED_CODEC = "unsupported_codec"  # no decoder for the video codec in this FFmpeg build
    DECODE_ERROR = "decode_error"  # opened, but decoding failed
    NO_FRAMES = "no_frames"  # opened, but not one frame decodes
    TRUNCATED = "truncated"  # an mp4 without its index, or fewer frames decode than the container declares
    BAD_MANIFEST_ROW = "bad_manifest_row"
    # clips
    TOO_SHORT = "too_short"  # the scene is shorter than split.min_clip_s
    ENCODE_ERROR = "encode_error"  # ffmpeg failed writing the clip
    LICENCE = "licence"  # outside the job's licence policy (licence not allowed, attribution missing, opted out)
    TAKEDOWN = "takedown"  # its source was taken down (`curate takedown`); recorded in the takedowns table
    SCORE_ERROR = "score_error"  # a scorer could not read or score the clip file (`error` says which and why)
    SELECT = "select"  # failed the job's select.where predicate; `reason` is "select: <the failed conditions>"
    NO_BUCKET = "no_bucket"  # shorter than every latents bucket at latents.fps
    LATENT_ERROR = "latent_error"  # the clip could not be decoded for the VAE
    BLANK = "blank"  # black or nearly constant frames (split.blank_max_std)
    TRANSITION = "transition"  # a fade or dissolve, with split.transition_margin_s on each side
    DUPLICATE = "duplicate"  # a near-duplicate of a better clip of this run or of an earlier output (`duplicate_of` names it)


class CaptionStatus:
    """`clips.caption_status`: null when the clip was not captioned (not kept, or captioning off)."""

    OK = "ok"  # the caption passed every check (maybe after the one retry: caption_attempts = 2)
    FAILED = "failed"  # no acceptable caption after the retry; `caption` is null, `caption_reason` says why


class CaptionReason:
    """`clips.caption_reason`: why the last attempt failed its checks (or why the first one did, when the retry passed)."""

    EMPTY = "empty"  # nothing but whitespace or punctuation
    TRUNCATED = "truncated"  # stopped at the output token limit without ending
    REPETITIVE = "repetitive"  # an n-gram loop ("a cat a cat a cat ...")
    REFUSAL = "refusal"  # "I'm sorry, I can't ..."
    DECODE_ERROR = "decode_error"  # the clip's frames could not be read
    INVALID_JSON = "invalid_json"  # caption.style structured: not one JSON object of the fixed shape


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
        pa.field("duration_s", pa.float64()),  # the split's frames on the repaired timeline (gaps not counted); the container's before
        pa.field("fps", pa.float64()),  # average frame rate
        pa.field("n_frames", pa.int64()),  # frames decoded by the split (the container's count before)
        pa.field("width", pa.int32()),  # displayed, after rotation
        pa.field("height", pa.int32()),
        pa.field("rotation", pa.int32()),  # display-matrix rotation in degrees (counter-clockwise), as ffmpeg reports it
        pa.field("vfr", pa.bool_()),  # variable frame rate
        pa.field("stream_start_s", pa.float64()),  # the video stream's start time
        pa.field("has_audio", pa.bool_()),
        pa.field("timestamps", pa.string()),  # `ok` | `repaired` (stages.timeline), set by the split
        pa.field("timestamps_note", pa.string()),  # what was repaired: reordered, repeated, missing pts, restarts, gaps
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
    pa.field("fps", pa.float64()),  # the clip file's frame rate: split.encode.fps, else the source's average rate
    pa.field("n_frames", pa.int64()),  # frames in the clip file (end_frame - start_frame unless split.encode.fps resamples)
    pa.field("clip_uri", pa.string()),
    pa.field("clip_bytes", pa.int64()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("status", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("error", pa.string()),
]

# Scores (issue 4): null where a clip was not scored (not kept, no clip file, scorer off) or could not be.
BOX_TYPE = pa.struct([pa.field("x", pa.int32()), pa.field("y", pa.int32()), pa.field("w", pa.int32()), pa.field("h", pa.int32())])
MOTION_FIELDS = [
    pa.field("motion_score", pa.float64()),  # % of the frame diagonal per second, median over time windows
    pa.field("motion_min_region", pa.float64()),  # the same, for the least moving cell of a regions x regions grid
    pa.field("motion_method", pa.string()),  # vectors | flow (not on one scale); vectors: the source's own when the one-pass split read them, else the clip file's
    # The camera's movement (stages/camera.py: a global model fitted per window, medians over windows);
    # signs are the camera's: the picture moves left on a pan right, down on a tilt up, grows on a zoom in.
    pa.field("camera_pan", pa.float64()),  # % of the frame diagonal per second, > 0: pans right
    pa.field("camera_tilt", pa.float64()),  # % of the frame diagonal per second, > 0: tilts up
    pa.field("camera_zoom", pa.float64()),  # relative scale change per second, > 0: zooms in
    pa.field("camera_motion", pa.string()),  # static | pan_left | pan_right | tilt_up | tilt_down | zoom_in | zoom_out | complex
]
AESTHETIC_FIELDS = [
    pa.field("aesthetic_score", pa.float64()),  # LAION aesthetic head over CLIP embeddings of a few frames
    pa.field("aesthetic_model", pa.string()),  # "<clip model>/<weights>+<head>"; "random" in it marks random weights
]
WATERMARK_FIELDS = [
    pa.field("watermark_score", pa.float64()),  # 0..1: something stays still while the picture moves
    pa.field("watermark_box", BOX_TYPE),  # that something's box in clip pixels (x, y from the top left)
]
TEXT_FIELDS = [  # burned-in text (stages/text.py): PP-OCR on a few frames
    pa.field("text_area", pa.float64()),  # mean over the sampled frames of the share of the frame inside text boxes, 0..1
    pa.field("text_frames", pa.float64()),  # share of the sampled frames with any text box, 0..1
    pa.field("text_static", pa.float64()),  # share of the text pixels that are text in every sampled frame (logo ~1, subtitles ~0); 0 without text
    pa.field("ocr_text", pa.string()),  # the distinct recognised lines, newline-joined, capped; null when recognition is off
]
NSFW_FIELDS = [  # unsafe content (stages/nsfw.py): NudeNet's detector on a few frames
    pa.field("nsfw_score", pa.float64()),  # 0..1: highest confidence over the sampled frames of the counted (exposed) classes
    pa.field("nsfw_labels", pa.list_(pa.string())),  # detector classes seen at >= nsfw.label_score, sorted
]
SCORE_FIELDS = [*MOTION_FIELDS, *AESTHETIC_FIELDS, *WATERMARK_FIELDS, *TEXT_FIELDS, *NSFW_FIELDS]
# Near-duplicates (stages/dedup.py), for every clip that got a signature (kept after score + select).
DEDUP_FIELDS = [
    pa.field("dup_group", pa.string()),  # clip_id of the group's representative (the clip itself when it has no duplicate)
    pa.field("duplicate_of", pa.string()),  # the representative's clip_id (maybe of an earlier output) when this clip is a duplicate; else null
]
# What the dedup step computes per clip: its signature (stages.dedup.ROWS x 32 bytes), or why there is none.
SIGNATURE_ROWS = pa.schema([pa.field("clip_id", pa.string()), pa.field("signature", pa.binary()), pa.field("error", pa.string())])
# OUT/dedup/signatures.parquet: the kept clips of an output, for `dedup.against` of later runs.
SIGNATURE_INDEX = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("source_id", pa.string()),
        pa.field("duration_s", pa.float64()),
        pa.field("aesthetic_score", pa.float64()),
        pa.field("signature", pa.binary()),  # stages.dedup.ROWS x 32 bytes: a 256-bit hash per view, the mean colour
        pa.field("embedding", pa.binary()),  # the clip's CLIP image embedding (float16, L2-normalised) with dedup.embedding_similarity, else null
    ],
    metadata={"curate.schema_version": str(SCHEMA_VERSION), "curate.table": "signatures"},
)
# Filled by the caption step (stages/caption.py) for kept clips; null elsewhere.
CAPTION_FIELDS = [
    pa.field("caption_model", pa.string()),  # hub id or local folder of the VLM; "(random weights)" appended when so
    pa.field("caption_style", pa.string()),  # the job's prompt style (short, detailed, ...)
    pa.field("caption_status", pa.string()),  # CaptionStatus
    pa.field("caption_reason", pa.string()),  # CaptionReason
    pa.field("caption_attempts", pa.int32()),  # 1, or 2 when the first caption failed a check
    pa.field("caption_tokens", pa.int32()),  # output tokens of the kept caption
    pa.field("caption_clip_score", pa.float64()),  # CLIP cosine similarity of caption and frames (mean over frames), -1..1
    pa.field("caption_clip_model", pa.string()),  # the CLIP that scored it; "(random weights)" appended when so
    # caption.style structured: the model's JSON object (subjects, actions, setting, camera, lighting, style,
    # on_screen_text), validated; `caption` is then the prose made from it
    pa.field("caption_json", pa.string()),
    # caption.rewrite: the VLM's caption before the rewrite (null without one); the LM whose rewrite is in
    # `caption` (null when the rewrite failed its checks twice and `caption` is the VLM's)
    pa.field("caption_raw", pa.string()),
    pa.field("caption_rewrite_model", pa.string()),
]
# VAE latents of a kept clip (stages/latents.py): the file, its shape, and how to use it.
LATENT_FIELDS = [
    pa.field("latent_uri", pa.string()),  # OUT/latents/<clip_id>.npy: latent mean [C, T, h, w], float16
    pa.field("latent_logvar_uri", pa.string()),  # its log-variance, same shape (latents.logvar)
    pa.field("latent_shape", pa.list_(pa.int32())),  # [C, T, h, w]
    pa.field("latent_dtype", pa.string()),
    pa.field("latent_frames", pa.int32()),  # video frames encoded (the bucket's)
    pa.field("latent_fps", pa.float64()),  # the rate they were taken at from the clip's start
    pa.field("latent_bucket", pa.string()),  # "FRAMESxHEIGHTxWIDTH"
    pa.field("vae_class", pa.string()),  # diffusers class
    pa.field("vae_id", pa.string()),  # hub id[/subfolder] or local folder; "(random weights)" when random
    pa.field("vae_revision", pa.string()),  # hub commit loaded, or sha256 of a local folder's files
    pa.field("vae_temporal_factor", pa.int32()),
    pa.field("vae_spatial_factor", pa.int32()),
    pa.field("latent_scaling_factor", pa.float64()),
    pa.field("latent_shift_factor", pa.float64()),
    pa.field("latent_channel_mean", pa.list_(pa.float64())),
    pa.field("latent_channel_std", pa.list_(pa.float64())),
]
# Caption embeddings (latents.text): float16 [L, D] and the attention mask (uint8 [L]).
TEXT_EMBEDDING_FIELDS = [
    pa.field("text_emb_uri", pa.string()),
    pa.field("text_mask_uri", pa.string()),
    pa.field("text_emb_shape", pa.list_(pa.int32())),
    pa.field("text_encoder", pa.string()),
]
# Files next to a clip that go into its shard sample: column holding the uri -> the sample's extension.
SAMPLE_FILES = {
    "latent_uri": "latent.npy",
    "latent_logvar_uri": "latent_logvar.npy",
    "text_emb_uri": "text_emb.npy",
    "text_mask_uri": "text_mask.npy",
}

CLIPS = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        *SCENE_FIELDS,
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),  # the clip file's frame rate: split.encode.fps, else the source's average rate
        pa.field("n_frames", pa.int64()),  # frames in the clip file; start_frame/end_frame stay source decode indices
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("clip_uri", pa.string()),
        pa.field("clip_bytes", pa.int64()),
        pa.field("license", pa.string()),
        *_ATTRIBUTION,
        pa.field("source_uri", pa.string()),
        pa.field("source_sha256", pa.string()),  # sha256 of the source's bytes
        pa.field("caption", pa.string()),
        *CAPTION_FIELDS,
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("error", pa.string()),
        pa.field("shard", pa.string()),  # path of the shard holding the clip, relative to the output
        *SCORE_FIELDS,
        *DEDUP_FIELDS,
        *LATENT_FIELDS,
        *TEXT_EMBEDDING_FIELDS,
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

# One row per `curate takedown`: what was asked, which source it matched, when, why, what it removed.
TAKEDOWNS = pa.schema(
    [
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("request", pa.string()),  # the id or uri given on the command line
        pa.field("uri", pa.string()),
        pa.field("source_url", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("time", pa.timestamp("s")),  # UTC
        pa.field("clips_removed", pa.int64()),
        pa.field("shards_rewritten", pa.list_(pa.string())),
    ],
    metadata={"curate.schema_version": str(SCHEMA_VERSION), "curate.table": "takedowns"},
)

TABLES: dict[str, pa.Schema] = {"sources": SOURCES, "scenes": SCENES, "clips": CLIPS, "shards": SHARDS}
TABLES["takedowns"] = TAKEDOWNS


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast `table`'s columns to `schema`; missing nullable columns become nulls.

    Raises KeyError naming a missing non-nullable column.
    """
    if table.schema.equals(schema):  # already conformed (metadata aside: from_arrays below sets it)
        return table.replace_schema_metadata(schema.metadata)
    cols, names = [], set(table.column_names)
    for f in schema:
        if f.name in names:
            col = table.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))
        elif f.nullable:
            cols.append(pa.nulls(table.num_rows, f.type))
        else:
            raise KeyError(f"column {f.name!r} is required by table {schema.metadata.get(b'curate.table')!r}")
    return pa.Table.from_arrays(cols, schema=schema)
