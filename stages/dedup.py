"""Near-duplicate clips: a perceptual signature per clip, candidates from LSH banding, groups.

Signature (weights-free): frames sampled at `fps` from the clip, grey and small, black bars (letterbox,
pillarbox) cut off; the frames are averaged over each quarter of the clip and each average gets a DCT
hash (its 64 lowest frequencies in zigzag order, DC left out, against their median, as pHash); the same
again for five 92% crops of the averages (centre and corners: VIEWS):

    clip     |------------|------------|------------|------------|
    frames    . . . . . .  . . . . . .  . . . . . .  . . . . . .     (`fps` a second)
    quarter   mean image    mean image   mean image   mean image
    hash      64 bits       64 bits      64 bits      64 bits      ->  256 bits per view, 6 views

Averaging makes it insensitive to a trim of half a second, to compression noise and to a small logo;
the low frequencies to half the resolution; the crop views to an 8% crop. Two clips are duplicates when
any view of one differs from the other's full view in at most `max_distance` bits and their mean colours
agree within COLOUR_TOLERANCE. Candidate pairs come
from LSH banding (bit sampling: `bands` keys, each some of the 256 bits, drawn with a fixed seed): only
clips sharing a key are compared, so the work grows with the clips, not with their pairs. Groups are the
connected components of the duplicate pairs; a group's representative is its first clip in
`representative_order` (so the result does not depend on the order rows come in).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import DEDUP_FIELDS, SIGNATURE_ROWS, ClipStatus, Reason
from stages.columns import ScoreError, scorable
from stages.media import MediaError, local_copy

BITS = 256
QUARTERS = 4
SIDE = 32  # frames are scaled to SIDE x SIDE grey before the DCT
BAR_LEVEL = 24  # a border row/column whose brightest pixel over the whole clip is below this is a black bar
# The views a signature is also made of: the full picture, then 92% crops (centre, four corners), so an
# 8% crop of a clip matches one of the original's views. The full view is views[0].
CROP = 0.92
VIEWS = ("full", "centre", "top_left", "top_right", "bottom_left", "bottom_right")
_ZIGZAG = sorted(((i, j) for i in range(12) for j in range(12)), key=lambda p: (p[0] + p[1], p[0]))[1:65]  # DC left out
_POP = np.array([bin(i).count("1") for i in range(256)], np.uint8)
# A signature is uint8 [ROWS, 32]: one 256-bit hash per view, then a row whose first 3 bytes are the clip's
# mean colour (B, G, R inside the bars): the hash is of grey levels, and two clips of one layout in other
# colours (counter.mp4's scenes: a digit on differently coloured backgrounds) are not copies.
ROWS = len(VIEWS) + 1
COLOUR_TOLERANCE = 20  # grey levels: copies' mean colours differ by at most this in each channel


@dataclass(frozen=True)
class DedupConfig:
    fps: float = 4.0  # frames sampled a second for the signature
    max_distance: int = 60  # of 256 bits: duplicates differ in at most this many (best view)
    bands: int = 64  # LSH: keys per signature
    band_bits: int | None = None  # LSH: bits per key; None: log2(clips) + 7, within [12, 32] (see band_bits_for)
    against: tuple[str, ...] = field(default_factory=tuple)  # earlier outputs (local or fsspec) whose kept clips count as originals
    # Also duplicates: clips whose CLIP image embeddings (the aesthetic scorer's, computed once) have at
    # least this cosine similarity; None: signatures only. Needs the aesthetic section with real CLIP
    # weights (a random CLIP maps every picture to nearly the same embedding). See EMBEDDINGS below.
    embedding_similarity: float | None = None

    def __post_init__(self):
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if not 0 <= self.max_distance < BITS // 2:
            raise ValueError(f"max_distance must be in [0, {BITS // 2}), got {self.max_distance}")
        if self.bands < 1 or (self.band_bits is not None and not 1 <= self.band_bits <= 63):
            raise ValueError(f"bands must be >= 1 and band_bits in [1, 63], got {self.bands}, {self.band_bits}")
        if self.embedding_similarity is not None and not 0 < self.embedding_similarity <= 1:
            raise ValueError(f"embedding_similarity must be in (0, 1], got {self.embedding_similarity}")
        object.__setattr__(self, "against", tuple(self.against))


# ------------------------------------------------------------------------------------------ signatures


def _bars(peak: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) rows/columns of the picture inside black bars, from the clip's brightest frame."""
    rows = np.flatnonzero(peak.max(axis=1) >= BAR_LEVEL)
    cols = np.flatnonzero(peak.max(axis=0) >= BAR_LEVEL)
    if len(rows) < peak.shape[0] // 4 or len(cols) < peak.shape[1] // 4:
        return 0, peak.shape[0], 0, peak.shape[1]  # (nearly) black clip: keep the whole frame
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def dct_hash(img: np.ndarray) -> np.ndarray:
    """64 bits (bool) of a grey image: its 64 lowest DCT frequencies (zigzag order, DC left out) against their median."""
    small = cv2.resize(np.ascontiguousarray(img, np.float32), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    d = cv2.dct(small)
    low = np.array([d[i, j] for i, j in _ZIGZAG])
    return low > np.median(low)


def _crop(img: np.ndarray, view: str) -> np.ndarray:
    if view == "full":
        return img
    h, w = img.shape
    ch, cw = round(h * CROP), round(w * CROP)
    y = {"centre": (h - ch) // 2, "top_left": 0, "top_right": 0}.get(view, h - ch)
    x = {"centre": (w - cw) // 2, "top_left": 0, "bottom_left": 0}.get(view, w - cw)
    return img[y : y + ch, x : x + cw]


def signature_of_frames(frames: list[np.ndarray]) -> np.ndarray:
    """The signature (uint8 [ROWS, 32]) of BGR or grey frames in time order (at least one)."""
    colour = [f if f.ndim == 3 else f[..., None].repeat(3, axis=2) for f in frames]
    grey = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in colour]
    peak = np.max(np.stack(grey), axis=0)
    t, b, l, r = _bars(peak)
    n, means = len(grey), []
    for q in range(QUARTERS):
        lo = min(n - 1, q * n // QUARTERS)
        hi = max(lo + 1, (q + 1) * n // QUARTERS)
        means.append(np.mean([f[t:b, l:r].astype(np.float32) for f in grey[lo:hi]], axis=0))
    rows = [np.packbits(np.concatenate([dct_hash(_crop(m, v)) for m in means])) for v in VIEWS]
    extra = np.zeros(BITS // 8, np.uint8)
    extra[:3] = np.clip(np.mean([f[t:b, l:r].reshape(-1, 3).mean(axis=0) for f in colour], axis=0).round(), 0, 255)
    return np.stack([*rows, extra])


class SignatureFrames:
    """A clip's frames in, its signature out (streaming): push every frame's time and picture in time
    order; frames `fps` a second apart are kept, BGR (or grey) and `width` wide. For a decoder that already has
    the frames (the one-pass split's analysis frames): push them, then `finish()`."""

    def __init__(self, fps: float, width: int = 128):
        self.fps, self.width = fps, width
        self.frames: list[np.ndarray] = []
        self._due, self._t0 = 0.0, None

    def due(self, t: float) -> bool:
        """Whether a frame at `t` s would be kept (push it then; skip converting the others)."""
        return self._t0 is None or t - self._t0 >= self._due - 1e-6

    def push(self, t: float, img: np.ndarray) -> None:
        if not self.due(t):
            return
        self._t0 = t if self._t0 is None else self._t0
        self._due += 1.0 / self.fps
        if img.shape[1] != self.width:
            h = max(2, round(img.shape[0] * self.width / img.shape[1] / 2) * 2)
            img = cv2.resize(img, (self.width, h), interpolation=cv2.INTER_AREA)
        self.frames.append(img)

    def finish(self) -> np.ndarray | None:
        """The signature (uint8 [ROWS, 32]); None when no frame came."""
        return signature_of_frames(self.frames) if self.frames else None


def clip_frames(path: str, fps: float, width: int = 128) -> list[np.ndarray]:
    """BGR frames `width` wide sampled at `fps` from the video at `path` (the first always; reference frames only)."""
    keep = SignatureFrames(fps, width)
    try:
        with av.open(path, metadata_errors="ignore") as c:
            if not c.streams.video:
                raise ScoreError("no video stream")
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            # frames nothing refers to (most B-frames) are not decoded: ~1.8x faster, and at `fps` a
            # second the sampled frames are at most a frame or two later
            s.codec_context.skip_frame = "NONREF"
            for i, frame in enumerate(c.decode(s)):
                t = float(frame.pts * s.time_base) if frame.pts is not None else i / 25.0
                if keep.due(t):
                    h = max(2, round(frame.height * width / frame.width / 2) * 2)
                    keep.push(t, frame.to_ndarray(format="bgr24", width=width, height=h))
    except av.FFmpegError as e:
        raise ScoreError(f"decoding failed: {e}") from e
    if not keep.frames:
        raise ScoreError("no frames")
    return keep.frames


def signature(path: str, fps: float) -> np.ndarray:
    return signature_of_frames(clip_frames(path, fps))


# ------------------------------------------------------------------------------------- pairs and groups


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between packed rows a [..., 32] and b [..., 32] (uint8), row by row."""
    return _POP[np.bitwise_xor(a, b)].sum(axis=-1, dtype=np.int32)


def distance(sigs: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Best-view distance of pairs (i, j) of signatures [n, views, 32]: any view of one against the other's full view."""
    v = len(VIEWS)
    a = hamming(sigs[i, :v], sigs[j, :1]).min(axis=1)
    b = hamming(sigs[i, :1], sigs[j, :v]).min(axis=1)
    colour = np.abs(sigs[i, v, :3].astype(np.int16) - sigs[j, v, :3]).max(axis=1)
    return np.where(colour <= COLOUR_TOLERANCE, np.minimum(a, b), BITS)


def band_bits_for(n: int, cfg: DedupConfig) -> int:
    """Bits per band key: log2(n) + 7 (a random signature meets about 6 views x bands / 128 = 3 chance
    candidates whatever n is), within [12, 32]; or the configured number."""
    return cfg.band_bits or int(np.clip(np.ceil(np.log2(max(n, 2))) + 7, 12, 32))


def _keys(packed: np.ndarray, pos: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Band keys of packed rows [m, 32]: the bytes at `pos`, each ANDed with its mask, as one uint64."""
    k = np.zeros(len(packed), np.uint64)
    for b, (p, m) in enumerate(zip(pos, mask)):
        k |= (packed[:, p] & m).astype(np.uint64) << np.uint64(8 * b)
    return k


def candidates(sigs: np.ndarray, bands: int, band_bits: int, seed: int = 0, views: int = len(VIEWS)) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (i < j) by LSH banding: a view of one clip shares a band key with the other's full view.

    A key samples `band_bits` bits of the 256: whole bytes at random places, the last one masked to the
    bits still needed (random ones). Drawn with `seed`: every run and every output uses the same keys.
    `sigs` is [n, >= views, 32]; `views` = 1: full views only (embedding codes).
    """
    n, v = len(sigs), views
    rng = np.random.default_rng(seed)
    flat = sigs[:, 1:v].reshape(n * (v - 1), sigs.shape[-1])  # the crop views (a full view would meet itself in every band)
    owner = np.repeat(np.arange(n), v - 1)
    nbytes = -(-band_bits // 8)
    low = np.uint64((1 << min(band_bits, 24)) - 1)
    seen = np.zeros(int(low) + 1, bool)  # which keys' low bits the full views have: most view keys meet none
    pairs = []
    for _ in range(bands):
        pos = rng.choice(BITS // 8, nbytes, replace=False)
        mask = np.full(nbytes, 0xFF, np.uint8)
        extra = nbytes * 8 - band_bits
        if extra:
            mask[-1] = np.packbits(np.isin(np.arange(8), rng.choice(8, 8 - extra, replace=False)))[0]
        kf, kv = _keys(sigs[:, 0], pos, mask), _keys(flat, pos, mask)
        slots = (kf & low).astype(np.int64)
        seen[slots] = True
        hit = np.flatnonzero(seen[(kv & low).astype(np.int64)])  # look up only keys that may meet one
        seen[slots] = False
        order = np.argsort(kf, kind="stable")
        sorted_kf = kf[order]
        same = np.flatnonzero(sorted_kf[1:] == sorted_kf[:-1])  # full views sharing a key with another
        shared = np.unique(np.concatenate([order[same], order[same + 1]]))
        q, who = np.concatenate([kv[hit], kf[shared]]), np.concatenate([owner[hit], shared])
        if not len(q):
            continue
        lo, hi = np.searchsorted(sorted_kf, q, "left"), np.searchsorted(sorted_kf, q, "right")
        counts = hi - lo
        total = int(counts.sum())
        starts = np.repeat(lo, counts) + (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))
        a, b = np.repeat(who, counts), order[starts]
        keep = a != b
        a, b = a[keep], b[keep]
        pairs.append(np.unique(np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b)))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    u = np.unique(np.concatenate(pairs))
    return u // n, u % n


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the graph with edges (i, j): the smallest node index of each node's component."""
    label = np.arange(n)
    while len(i):
        m = np.minimum(label[i], label[j])
        new = label.copy()
        np.minimum.at(new, i, m)
        np.minimum.at(new, j, m)
        new = new[new]  # jump: a node takes its label's label
        if np.array_equal(new, label):
            break
        label = new
    return label


# ------------------------------------------------------------------------------------------ embeddings
#
# EMBEDDINGS: with `embedding_similarity`, two clips are also duplicates when their CLIP image embeddings
# (mean of the aesthetic scorer's frame embeddings, L2-normalised, float16) have at least that cosine
# similarity: the same footage recut, reframed or regraded past what a DCT hash survives. Up to
# EXACT_PAIRS clips every pair is compared (a matrix product, blockwise). Beyond, candidates come from
# the same LSH banding over a 256-bit SimHash of each embedding, centred on the clips' mean first (CLIP
# embeddings of unrelated pictures are ~0.5 alike; centred, ~0: a random pair meets in a band of b bits
# with chance 2^-b) with b = log2(clips) + 3 bits a band: at 1M clips ~4M random candidates, and a
# pair 0.95 alike (0.9 centred) is found with chance ~0.85 over 64 bands (0.97-alike: ~0.997). Each
# candidate's cosine is then computed exactly pair by pair (no matrix kernel whose rounding depends on
# shapes or threads), so the decision is the same bytes everywhere. The SimHash planes are drawn from a
# fixed seed and projections made in float64 in blocks of one fixed size.

EXACT_PAIRS = 5000
_BLOCK = 4096


def embedding_codes(emb: np.ndarray, seed: int = 0) -> np.ndarray:
    """SimHash of embeddings [n, d] (float): [n, 1, 32] uint8, the sign of each of 256 projections."""
    n, d = emb.shape
    planes = np.random.default_rng([seed, d]).standard_normal((d, BITS))
    out = np.zeros((n, 1, BITS // 8), np.uint8)
    for s in range(0, n, _BLOCK):
        block = np.zeros((_BLOCK, d))
        block[: min(_BLOCK, n - s)] = emb[s : s + _BLOCK]
        out[s : s + _BLOCK, 0] = np.packbits(block @ planes > 0, axis=1)[: min(_BLOCK, n - s)]
    return out


def _cosines(e: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine of pairs (i, j) of unit rows, each summed on its own (the same bytes on any machine)."""
    if not len(i):
        return np.zeros(0)
    return np.concatenate([np.einsum("ij,ij->i", e[i[s : s + (1 << 18)]], e[j[s : s + (1 << 18)]]) for s in range(0, len(i), 1 << 18)])


def embedding_pairs(emb: np.ndarray, similarity: float, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of rows of `emb` [n, d] (L2-normalised; a row of NaN: none) with cosine >= `similarity`."""
    have = np.flatnonzero(np.isfinite(emb).all(axis=1))
    n = len(have)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    e = emb[have].astype(np.float64)
    if n <= EXACT_PAIRS:  # all pairs: a blockwise product finds them (with a margin for its rounding)
        found = []
        for s in range(0, n, _BLOCK):
            sim = e[s : s + _BLOCK] @ e.T
            a, b = np.nonzero(sim >= similarity - 1e-6)
            a = a + s
            found.append(np.stack([a[a < b], b[a < b]]))
        i, j = np.concatenate(found, axis=1)
    else:
        centred = e - e.mean(axis=0)
        bits = int(np.clip(np.ceil(np.log2(n)) + 3, 8, 32))
        i, j = candidates(embedding_codes(centred), cfg.bands, bits, seed=1, views=1)
    keep = _cosines(e, i, j) >= similarity
    return have[i[keep]], have[j[keep]]


def duplicate_groups(sigs: np.ndarray, cfg: DedupConfig, pair_ok: np.ndarray | None = None,
                     scene: np.ndarray | None = None, emb: np.ndarray | None = None) -> np.ndarray:
    """Component label of every signature (the smallest index in its group of duplicates).

    `pair_ok` (bool per signature): pairs where both are False are not compared (clips of earlier outputs,
    deduplicated when they were made). `scene` (int per signature, -1: none): two windows of one scene
    (a long shot cut at split.max_clip_s) are its continuation, not copies of each other, and are not paired.
    `emb` ([n, d] CLIP embeddings, NaN rows for none): with `cfg.embedding_similarity`, pairs that similar
    are duplicates too."""
    n = len(sigs)
    if n < 2:
        return np.arange(n)

    def allowed(i, j):
        keep = np.ones(len(i), bool)
        if pair_ok is not None:
            keep &= pair_ok[i] | pair_ok[j]
        if scene is not None:
            keep &= (scene[i] != scene[j]) | (scene[i] < 0)
        return i[keep], j[keep]

    i, j = allowed(*candidates(sigs, cfg.bands, band_bits_for(n, cfg)))
    dup = np.zeros(len(i), bool)
    for s in range(0, len(i), 1 << 20):  # verify in chunks: [chunk, views, 32] at a time
        dup[s : s + (1 << 20)] = distance(sigs, i[s : s + (1 << 20)], j[s : s + (1 << 20)]) <= cfg.max_distance
    i, j = i[dup], j[dup]
    if emb is not None and cfg.embedding_similarity is not None:
        ei, ej = allowed(*embedding_pairs(emb, cfg.embedding_similarity, cfg))
        i, j = np.concatenate([i, ei]), np.concatenate([j, ej])
    return components(n, i, j)


# ------------------------------------------------------------------------------------------- the stages


class Signatures:
    """CLIPS rows -> (clip_id, signature, error): the signature of every kept clip with a file, else null."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for r in batch.select(["clip_id", "clip_uri", "status"]).to_pylist():
            sig, err = None, None
            if scorable(r):
                try:
                    with local_copy(r["clip_uri"]) as path:
                        sig = signature(path, self.cfg.fps).tobytes()
                except (ScoreError, OSError, MediaError) as e:
                    err = f"dedup: {e}"
            rows.append({"clip_id": r["clip_id"], "signature": sig, "error": err})
        return pa.Table.from_pylist(rows, schema=SIGNATURE_ROWS)


EMBEDDING = "embedding"  # (sigs, the signature index) a clip's CLIP image embedding: float16 bytes, L2-normalised


def with_embedding(table: pa.Table) -> pa.Table:
    """A signature table or index with the EMBEDDING column (nulls where it has none: an index written
    before embeddings were kept, or a run without dedup.embedding_similarity)."""
    return table if EMBEDDING in table.column_names else table.append_column(EMBEDDING, pa.nulls(table.num_rows, pa.binary()))


def embedding_bytes(frame_embeddings: np.ndarray) -> bytes:
    """A clip's embedding from its frames' CLIP embeddings [frames, d]: each L2-normalised, averaged,
    normalised again, as float16 bytes."""
    e = np.asarray(frame_embeddings, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    m = e.mean(axis=0)
    return (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float16).tobytes()


def embeddings_array(column) -> np.ndarray:
    """float16 embedding bytes (or nulls) -> [n, d] float64, re-normalised; NaN rows for nulls (d from the first)."""
    values = column.to_pylist()
    d = next((len(v) // 2 for v in values if v), 1)
    out = np.full((len(values), d), np.nan)
    rows = [k for k, v in enumerate(values) if v and len(v) == 2 * d]
    if rows:
        e = np.frombuffer(b"".join(values[k] for k in rows), np.float16).reshape(len(rows), d).astype(np.float64)
        out[rows] = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return out


def representative_order(clips: pa.Table) -> pa.Table:
    """`clips` (clip_id, duration_s, aesthetic_score, earlier) sorted best first: clips of an earlier
    output, then the longest, then the highest aesthetic score (none last), then the smallest clip_id."""
    key = pa.table({
        "earlier": pc.invert(clips["earlier"]),
        "duration": pc.negate(pc.fill_null(clips["duration_s"], 0.0)),
        "has_aesthetic": pc.is_null(clips["aesthetic_score"]),
        "aesthetic": pc.negate(pc.fill_null(clips["aesthetic_score"], 0.0)),
        "clip_id": clips["clip_id"],
    })
    order = pc.sort_indices(key, [(c, "ascending") for c in key.column_names])
    return clips.take(order)


def mark_duplicates(clips: pa.Table, sigs: pa.Table, earlier: pa.Table | None, cfg: DedupConfig) -> pa.Table:
    """CLIPS rows -> the same rows with dup_group and duplicate_of; duplicates that are not their group's
    representative become `filtered` / `duplicate`.

    `sigs`: (clip_id, signature) of this run's clips; `earlier`: SIGNATURE_INDEX rows of earlier outputs
    (their clips are originals: a group holding one is represented by it).
    """
    have = with_embedding(sigs.filter(pc.is_valid(sigs["signature"])))
    mine = clips.select(["clip_id", "duration_s", "aesthetic_score"]).join(have.select(["clip_id", "signature", EMBEDDING]), "clip_id", join_type="inner")
    mine = mine.append_column("earlier", pa.array(np.zeros(mine.num_rows, bool)))
    scene_of = clips.select(["clip_id", "source_id", "scene_index"])
    pool = mine
    if earlier is not None and earlier.num_rows:
        old = with_embedding(earlier).select(["clip_id", "duration_s", "aesthetic_score", "signature", EMBEDDING])
        old = old.filter(pc.invert(pc.is_in(old["clip_id"], clips["clip_id"])))  # the same clip (a rerun against itself) is no copy
        old = old.append_column("earlier", pa.array(np.ones(old.num_rows, bool)))
        pool = pa.concat_tables([mine, old.cast(mine.schema)])
    # canonical order first, so groups and representatives do not depend on the order rows came in
    pool = representative_order(pool)
    n = pool.num_rows
    mapping = pa.table({"clip_id": pa.array([], pa.string()), "dup_group": pa.array([], pa.string()), "duplicate_of": pa.array([], pa.string())})
    if n:
        arr = np.frombuffer(b"".join(pool["signature"].to_pylist()), np.uint8).reshape(n, ROWS, BITS // 8)
        is_new = ~pool["earlier"].to_numpy(zero_copy_only=False)
        # which scene of which source each clip is a window of (-1: a clip of an earlier output)
        keyed = pool.select(["clip_id"]).append_column("_k", pa.array(np.arange(n))).join(scene_of, "clip_id", join_type="left outer").sort_by("_k")
        key = pc.binary_join_element_wise(keyed["source_id"], pc.cast(keyed["scene_index"], pa.string()), "/")
        scene = pc.fill_null(pc.dictionary_encode(key).combine_chunks().indices, -1).to_numpy(zero_copy_only=False)
        emb = embeddings_array(pool[EMBEDDING]) if cfg.embedding_similarity is not None else None
        label = duplicate_groups(arr, cfg, pair_ok=is_new, scene=scene, emb=emb)  # smallest index of the group = its best clip
        rep = pool["clip_id"].take(pa.array(label))
        is_dup = pa.array(label != np.arange(n))
        mapping = pa.table({"clip_id": pool["clip_id"], "dup_group": rep,
                            "duplicate_of": pc.if_else(is_dup, rep, pa.scalar(None, pa.string()))}).filter(pa.array(is_new))
    row = "__dedup_row"
    joined = clips.select(["clip_id", "status", "reason"]).append_column(row, pa.array(np.arange(clips.num_rows)))
    joined = joined.join(mapping, "clip_id", join_type="left outer").sort_by(row)
    dup = pc.and_(pc.is_valid(joined["duplicate_of"]), pc.equal(joined["status"], ClipStatus.KEPT))
    cols = {
        "dup_group": joined["dup_group"],
        "duplicate_of": joined["duplicate_of"],
        "status": pc.if_else(dup, pa.scalar(ClipStatus.FILTERED), joined["status"]),
        "reason": pc.if_else(dup, pa.scalar(Reason.DUPLICATE), joined["reason"]),
    }
    fields = [*DEDUP_FIELDS, pa.field("status", pa.string(), nullable=False), pa.field("reason", pa.string())]
    for f in fields:
        i = clips.schema.get_field_index(f.name)
        values = cols[f.name].cast(f.type)
        clips = clips.set_column(i, f, values) if i >= 0 else clips.append_column(f, values)
    return clips
