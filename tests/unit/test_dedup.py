"""Near-duplicate clips: every re-upload edit of a real shot is found, other shots are not, groups and
representatives do not depend on row order, and the LSH candidates find planted pairs among random ones."""

import numpy as np
import pyarrow as pa
import pytest

from curate.bench.dedup import EDITS, cut, edit
from schemas import CLIPS, SIGNATURE_INDEX
from stages.dedup import BITS, ROWS, DedupConfig, Signatures, components, distance, duplicate_groups, mark_duplicates


@pytest.fixture(scope="module")
def media(videos, tmp_path_factory):
    d = tmp_path_factory.mktemp("dedup")
    orig = cut(str(videos / "bikes.mp4"), 3.2, 2.0, str(d / "orig.mp4"))
    files = {"original": orig, **{e: edit(orig, e, str(d / f"{e}.mp4")) for e in EDITS}}
    files["other_shot"] = cut(str(videos / "bikes.mp4"), 5.6, 1.8, str(d / "other_shot.mp4"))
    files["other_video"] = cut(str(videos / "carphone_pristine.mp4"), 0.5, 2.0, str(d / "other_video.mp4"))
    return files


@pytest.fixture(scope="module")
def signed(media):
    names = list(media)
    table = pa.Table.from_pylist([{**{f.name: None for f in CLIPS}, "clip_id": n, "source_id": "s", "status": "kept", "clip_uri": p}
                                  for n, p in media.items()], schema=CLIPS)
    sigs = Signatures(DedupConfig())(table)
    assert sigs["error"].null_count == len(names) and sigs["signature"].null_count == 0
    return table, sigs


def _arr(sigs):
    return np.frombuffer(b"".join(sigs["signature"].to_pylist()), np.uint8).reshape(sigs.num_rows, ROWS, BITS // 8)


def test_every_edit_is_grouped_with_its_original_and_other_shots_are_not(signed):
    table, sigs = signed
    names = table["clip_id"].to_pylist()
    label = dict(zip(names, duplicate_groups(_arr(sigs), DedupConfig())))
    for e in EDITS:
        assert label[e] == label["original"], e
    assert label["other_shot"] != label["original"] and label["other_video"] != label["original"]
    assert label["other_shot"] != label["other_video"]
    d = dict(zip(names, distance(_arr(sigs), np.zeros(len(names), int), np.arange(len(names)))))
    assert max(d[e] for e in EDITS) < min(d["other_shot"], d["other_video"])


def test_representative_is_the_longest_whatever_the_row_order(signed):
    table, sigs = signed
    n = table.num_rows
    names = table["clip_id"].to_pylist()
    # the original is longest; the logo copy ties it in length and wins on the aesthetic score
    dur = {k: (2.0 if k in ("original", "logo") else 1.5) for k in names}
    aes = {k: (5.0 if k == "logo" else 4.0) for k in names}
    table = table.set_column(table.schema.get_field_index("duration_s"), "duration_s", pa.array([dur[k] for k in names], pa.float64()))
    table = table.set_column(table.schema.get_field_index("aesthetic_score"), "aesthetic_score", pa.array([aes[k] for k in names], pa.float64()))
    results = []
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(n)
        out = mark_duplicates(table.take(perm), sigs.take(np.random.default_rng(seed + 10).permutation(n)), None, DedupConfig())
        results.append({r["clip_id"]: (r["dup_group"], r["duplicate_of"], r["status"], r["reason"]) for r in out.to_pylist()})
    assert results[0] == results[1] == results[2]
    r = results[0]
    assert r["logo"] == ("logo", None, "kept", None)
    for e in [*EDITS, "original"]:
        if e != "logo":
            assert r[e] == ("logo", "logo", "filtered", "duplicate"), e
    assert r["other_shot"] == ("other_shot", None, "kept", None)


def test_windows_of_one_scene_are_not_duplicates_of_each_other(signed):
    """A long shot cut into max_clip_s windows: its windows look alike but are its continuation, not copies."""
    table, sigs = signed
    sub = table.filter(pa.compute.is_in(table["clip_id"], pa.array(["original", "low_quality", "other_video"])))
    same = [0 if c != "other_video" else 1 for c in sub["clip_id"].to_pylist()]
    sub = sub.set_column(sub.schema.get_field_index("scene_index"), "scene_index", pa.array(same, pa.int32()))
    out = {r["clip_id"]: r for r in mark_duplicates(sub, sigs, None, DedupConfig()).to_pylist()}
    assert out["original"]["duplicate_of"] is None and out["low_quality"]["duplicate_of"] is None
    # of another scene of the source (a repeated segment), or of another source, they are
    other = sub.set_column(sub.schema.get_field_index("scene_index"), "scene_index", pa.array([0, 1, 2], pa.int32()))
    out = {r["clip_id"]: r for r in mark_duplicates(other, sigs, None, DedupConfig()).to_pylist()}
    assert {out["original"]["duplicate_of"], out["low_quality"]["duplicate_of"]} == {None, out["original"]["dup_group"]}


def test_clips_of_an_earlier_output_are_the_originals(signed):
    table, sigs = signed
    keep = ["half_resolution", "other_video"]
    earlier = pa.table({"clip_id": ["A/half"], "source_id": ["x"], "duration_s": [1.0], "aesthetic_score": [None],
                        "signature": [sigs.filter(pa.compute.equal(sigs["clip_id"], "half_resolution"))["signature"][0].as_py()], "embedding": [None]},
                       schema=SIGNATURE_INDEX)
    sub = table.filter(pa.compute.is_in(table["clip_id"], pa.array(keep)))
    out = {r["clip_id"]: r for r in mark_duplicates(sub, sigs, earlier, DedupConfig()).to_pylist()}
    assert (out["half_resolution"]["duplicate_of"], out["half_resolution"]["reason"]) == ("A/half", "duplicate")
    assert out["other_video"]["duplicate_of"] is None and out["other_video"]["dup_group"] == "other_video"
    # an output deduplicated against itself (its own index) keeps its clips
    own = pa.table({"clip_id": ["other_video"], "source_id": ["x"], "duration_s": [9.0], "aesthetic_score": [None],
                    "signature": [sigs.filter(pa.compute.equal(sigs["clip_id"], "other_video"))["signature"][0].as_py()], "embedding": [None]},
                   schema=SIGNATURE_INDEX)
    again = {r["clip_id"]: r for r in mark_duplicates(sub, sigs, own, DedupConfig()).to_pylist()}
    assert again["other_video"]["status"] == "kept" and again["other_video"]["duplicate_of"] is None


def test_lsh_finds_planted_pairs_among_random_signatures():
    rng = np.random.default_rng(1)
    n, planted = 5000, 200
    sigs = rng.integers(0, 256, (n, ROWS, BITS // 8), dtype=np.uint8)
    bits = np.unpackbits(sigs[:planted, 0], axis=1)
    flip = np.zeros_like(bits)
    for k in range(planted):
        flip[k, rng.choice(BITS, 25, replace=False)] = 1  # ~10% of the bits, like a re-encode plus a logo
    sigs[planted : 2 * planted, 0] = np.packbits(bits ^ flip, axis=1)
    sigs[planted : 2 * planted, -1] = sigs[:planted, -1]  # the same mean colour
    label = duplicate_groups(sigs, DedupConfig())
    assert (label[:planted] == label[planted : 2 * planted]).mean() >= 0.99
    assert len(np.unique(label[2 * planted :])) == n - 2 * planted  # random signatures: no group


def test_components_join_chains_and_keep_the_smallest_index():
    assert components(6, np.array([4, 1, 3]), np.array([5, 3, 2])).tolist() == [0, 1, 1, 1, 4, 4]
    assert components(3, np.zeros(0, int), np.zeros(0, int)).tolist() == [0, 1, 2]


def test_write_index_keeps_kept_clips_and_a_takedown_drops_its_source(signed, tmp_path):
    import pyarrow.parquet as pq

    from curate.dedup import INDEX, drop_from_index, write_index
    from curate.storage import Output

    table, sigs = signed
    status = ["filtered" if c == "logo" else "kept" for c in table["clip_id"].to_pylist()]
    source = ["b" if c == "other_video" else "a" for c in table["clip_id"].to_pylist()]
    table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(status))
    table = table.set_column(table.schema.get_field_index("source_id"), "source_id", pa.array(source))
    out = Output(str(tmp_path / "out"))
    assert write_index(out, table, sigs) == table.num_rows - 1
    index = pq.read_table(tmp_path / "out" / INDEX)
    assert "logo" not in index["clip_id"].to_pylist() and index.schema == SIGNATURE_INDEX
    drop_from_index(out, {"b"})
    assert set(pq.read_table(tmp_path / "out" / INDEX)["source_id"].to_pylist()) == {"a"}


def test_signature_from_pushed_analysis_frames_matches_the_clip_file(media):
    """The streaming accumulator (for the one-pass split's BGR analysis frames) gives a signature close to
    the one read from the clip file, far from another shot's."""
    import av

    from stages.dedup import SignatureFrames, hamming, signature

    def pushed(path):
        acc = SignatureFrames(DedupConfig().fps)
        with av.open(path) as c:
            for f in c.decode(c.streams.video[0]):
                acc.push(float(f.time), f.to_ndarray(format="bgr24", width=160, height=68))
        return acc.finish()

    a, b = pushed(media["original"]), signature(media["original"], DedupConfig().fps)
    assert hamming(a[0], b[0]) <= 20 < hamming(a[0], signature(media["other_shot"], DedupConfig().fps)[0])
    assert SignatureFrames(4.0).finish() is None


@pytest.mark.parametrize("video", ["bikes.mp4", "issue-134-rotate.mp4"])
def test_the_one_pass_split_signs_each_clip_like_its_file(videos, tmp_path, video):
    """The split's signatures (from its analysis frames, turned upright like the clip file: issue-134-rotate
    is stored turned by 90 degrees) match the clip files' own, and each is nearer its own clip than any other."""
    from stages.dedup import hamming, signature
    from stages.ingest import Ingest
    from stages.media import EncodeSettings
    from stages.split import Split, SplitConfig

    fps = DedupConfig().fps
    src = Ingest()(pa.table({"uri": [str(videos / video)], "license": ["CC0-1.0"]}))
    cfg = SplitConfig(max_clip_s=3.0, encode=EncodeSettings(preset="ultrafast"))
    row = Split(cfg, str(tmp_path / "clips"), signature=(fps, "k1"))(src).to_pylist()[0]
    kept = [c for c in row["clips"] if c["status"] == "kept"]
    assert len(kept) >= 2 and all(c["signature_key"] == "k1" for c in kept)
    split = np.stack([np.frombuffer(c["signature"], np.uint8).reshape(ROWS, BITS // 8) for c in kept])
    files = np.stack([signature(c["clip_uri"], fps) for c in kept])
    d = hamming(split[:, None, 0], files[None, :, 0])  # [split clip, file clip], full views
    assert np.all(np.diag(d) <= 20), np.diag(d)
    assert np.all(d.argmin(axis=1) == np.arange(len(kept))), d
    # without the turn the rotated video's signatures would not match its upright clip files
    if video == "issue-134-rotate.mp4":
        assert Split(cfg, str(tmp_path / "c2"))(src).to_pylist()[0]["clips"][0]["signature"] is None  # off unless asked


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_embedding_similarity_groups_what_the_signatures_do_not():
    """dedup.embedding_similarity: clips whose CLIP embeddings are that close are duplicates though their
    signatures are unrelated (a recut, a regrade); unrelated embeddings that share a strong common
    direction (as CLIP's do, about 0.5 apart) are not; the same groups whatever the row order."""
    from stages.dedup import embedding_bytes, embeddings_array

    rng = np.random.default_rng(3)
    n, planted, d = 6000, 100, 512
    common = _unit(rng.standard_normal(d))
    emb = _unit(0.7 * common + _unit(rng.standard_normal((n, d))) * 0.7)  # pairwise cosine about 0.5
    emb[planted : 2 * planted] = _unit(emb[:planted] + 0.2 * _unit(rng.standard_normal((planted, d))))  # cosine about 0.98
    emb = embeddings_array(pa.array([embedding_bytes(e[None]) for e in emb]))  # through float16, as stored
    sigs = rng.integers(0, 256, (n, ROWS, BITS // 8), dtype=np.uint8)  # no two alike
    off = duplicate_groups(sigs, DedupConfig(), emb=emb)
    assert len(np.unique(off)) == n  # without the setting, embeddings are not looked at
    cfg = DedupConfig(embedding_similarity=0.95)
    label = duplicate_groups(sigs, cfg, emb=emb)
    assert (label[:planted] == label[planted : 2 * planted]).mean() >= 0.99
    assert len(np.unique(label[2 * planted :])) == n - 2 * planted
    # a clip without an embedding (NaN row) is compared by signature only
    emb[0] = np.nan
    assert duplicate_groups(sigs, cfg, emb=emb)[planted] != 0
    # shuffled: the same pairs (labels are smallest indexes, so compare the partition)
    perm = rng.permutation(n)
    shuffled = duplicate_groups(sigs[perm], cfg, emb=emb[perm])
    same = lambda lab: {frozenset(np.flatnonzero(lab == g)) for g in np.unique(lab) if (lab == g).sum() > 1}  # noqa: E731
    assert {frozenset(perm[list(s)]) for s in same(shuffled)} == same(duplicate_groups(sigs, cfg, emb=emb))


def test_embedding_codes_do_not_depend_on_how_many_clips():
    from stages.dedup import embedding_codes

    e = _unit(np.random.default_rng(0).standard_normal((5000, 64)))
    assert np.array_equal(embedding_codes(e[:7]), embedding_codes(e)[:7])
    assert np.array_equal(embedding_codes(e[4090:4100]), embedding_codes(e)[4090:4100])


def test_an_earlier_outputs_clip_is_the_original_by_embedding(signed):
    """Across runs: a clip of this run whose embedding matches a clip in an earlier output's index (its
    signature does not) is that clip's duplicate; an index written before embeddings (no column) still loads."""
    from stages.dedup import EMBEDDING, embedding_bytes, with_embedding

    table, sigs = signed
    sub = table.filter(pa.compute.is_in(table["clip_id"], pa.array(["other_video", "other_shot"])))
    rng = np.random.default_rng(0)
    vecs = {k: _unit(rng.standard_normal(32)) for k in ("other_video", "other_shot")}
    mine = sigs.append_column(EMBEDDING, pa.array([embedding_bytes(vecs[c][None]) if c in vecs else None for c in sigs["clip_id"].to_pylist()], pa.binary()))
    near = _unit(vecs["other_video"] + 0.1 * _unit(rng.standard_normal(32)))
    orig = sigs.filter(pa.compute.equal(sigs["clip_id"], "original"))["signature"][0].as_py()  # another shot's signature
    earlier = pa.table({"clip_id": ["A/x"], "source_id": ["x"], "duration_s": [1.0], "aesthetic_score": [None], "signature": [orig],
                        "embedding": [embedding_bytes(near[None])]}, schema=SIGNATURE_INDEX)
    out = {r["clip_id"]: r for r in mark_duplicates(sub, mine, earlier, DedupConfig(embedding_similarity=0.95)).to_pylist()}
    assert (out["other_video"]["duplicate_of"], out["other_video"]["reason"]) == ("A/x", "duplicate")
    assert out["other_shot"]["duplicate_of"] is None
    off = {r["clip_id"]: r for r in mark_duplicates(sub, mine, earlier, DedupConfig()).to_pylist()}
    assert off["other_video"]["duplicate_of"] is None
    old = with_embedding(earlier.drop_columns([EMBEDDING]))
    assert old.column_names == SIGNATURE_INDEX.names and old[EMBEDDING].null_count == 1


def test_embedding_pairs_are_the_same_by_all_pairs_and_by_lsh(monkeypatch):
    """Up to EXACT_PAIRS clips every pair is compared; the LSH path beyond finds the same pairs here."""
    import stages.dedup as dd

    rng = np.random.default_rng(5)
    common = _unit(rng.standard_normal(256))
    emb = _unit(0.7 * common + 0.7 * _unit(rng.standard_normal((1200, 256))))
    emb[600:700] = _unit(emb[:100] + 0.15 * _unit(rng.standard_normal((100, 256))))
    cfg = DedupConfig(embedding_similarity=0.95)
    exact = set(zip(*map(list, dd.embedding_pairs(emb, 0.95, cfg))))
    assert len(exact) >= 100 and all(a < b for a, b in exact)
    monkeypatch.setattr(dd, "EXACT_PAIRS", 10)
    assert set(zip(*map(list, dd.embedding_pairs(emb, 0.95, cfg)))) == exact
