"""The commit log (curate/commit.py): parts named by their ids, whole or absent, later runs win, bounded."""

from __future__ import annotations

import os

import pyarrow as pa

from curate.commit import RUN, CommitLog, latest_rows, part_name
from schemas import CLIPS


def block(ids, value, match=None):
    return pa.table({"id": ids, "match": [match] * len(ids), "score": [value] * len(ids)})


def test_a_retried_block_rewrites_the_same_part(tmp_path):
    log = CommitLog(str(tmp_path), "score", "k1")
    first = log.write(block(["b", "a"], 1.0), run=1)
    assert first == part_name(["a", "b"], [None, None]) and log.write(block(["a", "b"], 1.0), run=1) == first
    assert [os.path.basename(p) for p in log.parts()] == [first]
    assert log.write(block([], 0.0)) is None


def test_temporaries_are_never_read(tmp_path):
    log = CommitLog(str(tmp_path), "score", "k1")
    log.write(block(["a"], 1.0), run=1)
    (tmp_path / "commit" / "score" / "k1" / ".part-x.parquet.tmp-abc").write_bytes(b"half a file")
    assert len(log.parts()) == 1 and log.read()["id"].to_pylist() == ["a"]


def test_the_latest_run_wins_and_matches_are_kept_apart(tmp_path):
    log = CommitLog(str(tmp_path), "caption", "k1")
    log.write(block(["a", "b"], 1.0, match="p1"), run=1)
    log.write(block(["a"], 2.0, match="p1"), run=2)  # a later run's result for a
    log.write(block(["a"], 3.0, match="p2"), run=3)  # another prompt for a
    index = CommitLog(str(tmp_path), "caption", "k1").locate(["a", "b", "z"])
    assert set(index) == {("a", "p1"), ("b", "p1"), ("a", "p2")}
    rows = log.rows({("a", "p1"): index[("a", "p1")], ("b", "p1"): index[("b", "p1")]})
    assert rows["a"]["score"] == 2.0 and rows["b"]["score"] == 1.0
    assert log.rows({("a", "p2"): index[("a", "p2")]})["a"]["score"] == 3.0
    latest = log.read(keys=("id", "match"))
    assert sorted(zip(latest["id"].to_pylist(), latest["match"].to_pylist(), latest["score"].to_pylist())) == [
        ("a", "p1", 2.0), ("a", "p2", 3.0), ("b", "p1", 1.0)]
    assert sorted(log.read()["score"].to_pylist()) == [1.0, 3.0]  # by id only: a's latest is the p2 row


def test_compact_folds_parts_without_losing_a_result(tmp_path):
    log = CommitLog(str(tmp_path), "score", "k1")
    for i in range(10):
        log.write(block([f"c{i}"], float(i)), run=i)
    log.write(block(["c0"], 99.0), run=100)  # the same (id, match): the same part, rewritten
    assert not log.compact(min_parts=20) and len(log.parts()) == 10
    log.write(block(["c0", "c1"], 50.0), run=101)
    assert log.compact(min_parts=5) and len(log.parts()) == 1
    folded = log.read()
    assert dict(zip(folded["id"].to_pylist(), folded["score"].to_pylist())) == {**{f"c{i}": float(i) for i in range(2, 10)}, "c0": 50.0, "c1": 50.0}


def test_latest_rows_orders_by_run_then_position():
    t = pa.table({"id": ["x", "y", "x", "x"], RUN: [5, 1, 5, 2], "v": [1, 2, 3, 4]})
    got = latest_rows(t)
    assert dict(zip(got["id"].to_pylist(), got["v"].to_pylist())) == {"x": 3, "y": 2}
    assert RUN not in got.column_names


def test_a_killed_runs_temporary_parts_are_removed_at_the_next_start(tmp_path):
    from curate.storage import Output

    log = CommitLog(str(tmp_path), "sources", "rows")
    log.write(block(["a"], 1.0), run=1)
    tmp = tmp_path / "commit" / "sources" / "rows" / ".part-x.parquet.tmp-abc"
    tmp.write_bytes(b"half a file")
    assert Output(str(tmp_path)).remove_temporaries() == 1
    assert not tmp.exists() and len(log.parts()) == 1


class _Reverse:
    """A pool stage that rebuilds its rows in another order, keeping only clip columns."""

    def __call__(self, batch):
        from schemas import conform

        return conform(batch, CLIPS).take(list(range(batch.num_rows))[::-1])


class _Mark:
    def __call__(self, batch):
        return batch.set_column(batch.schema.get_field_index("reason"), "reason", pa.array(["seen"] * batch.num_rows, pa.string()))


def test_carried_columns_ride_through_a_step_that_rebuilds_its_rows(tmp_path):
    """The split's signature rides along every step to the one that uses it, matched by clip_id, even when a
    stage reorders rows or drops unknown columns; rows the step skips keep it too."""
    from curate.plan import SPLIT_SIGNATURE, Pool, Step, StepRunner

    rows = [{**{f.name: None for f in CLIPS}, "clip_id": f"c{i}", "source_id": "s", "status": "kept" if i != 1 else "filtered",
             "clip_uri": f"/x/c{i}.mp4"} for i in range(4)]
    batch = pa.Table.from_pylist(rows, schema=CLIPS).append_column(pa.field(SPLIT_SIGNATURE, pa.binary()), pa.array([b"s0", b"s1", None, b"s3"]))
    step = Step("two", (Pool(_Reverse), Pool(_Mark)), ("reason",))
    mid = StepRunner(step, 0, str(tmp_path), 1)(batch)
    out = StepRunner(step, 1, str(tmp_path), 1)(mid)
    got = dict(zip(out["clip_id"].to_pylist(), out[SPLIT_SIGNATURE].to_pylist()))
    assert got == {"c0": b"s0", "c1": b"s1", "c2": None, "c3": b"s3"}
    assert dict(zip(out["clip_id"].to_pylist(), out["reason"].to_pylist())) == {"c0": "seen", "c1": None, "c2": "seen", "c3": "seen"}


class _Counting:
    """A model pool stage that records the clip ids it is given and marks them."""

    seen: list = []

    def __call__(self, batch):
        _Counting.seen += batch["clip_id"].to_pylist()
        return batch.set_column(batch.schema.get_field_index("reason"), "reason", pa.array(["made"] * batch.num_rows, pa.string()))


def test_a_model_step_looks_up_in_a_task_apart_and_its_actors_compute_only_what_is_left(tmp_path, monkeypatch):
    """A committed step whose pool is an actor pool (a model) has its lookup as a runner of its own
    (LOOKUP, a CPU task in the plan): the pool then never reads the log, is given the block's rows to
    compute only, and commits them; rows committed before come back with their committed values."""
    from curate.plan import LOOKUP, TODO, Pool, Step, StepRunner, looks_up_apart, step_runners

    def rows(ids):
        return pa.Table.from_pylist([{**{f.name: None for f in CLIPS}, "clip_id": i, "source_id": "s", "status": "kept",
                                      "clip_uri": f"/x/{i}.mp4"} for i in ids], schema=CLIPS)

    step = Step("model", (Pool(_Counting, actors=(1, 1), gpu=True, batch_size=2),), ("reason",), "k1")
    assert looks_up_apart(step) and not looks_up_apart(Step("cpu", (Pool(_Counting),), ("reason",), "k1"))
    assert [r.index for r in step_runners(step, str(tmp_path), 1)] == [LOOKUP, 0]
    _Counting.seen = []
    lookup, pool = step_runners(step, str(tmp_path), 1)
    first = pool(lookup(rows(["a", "b"])))
    assert _Counting.seen == ["a", "b"] and first["reason"].to_pylist() == ["made", "made"] and TODO not in first.column_names

    _Counting.seen = []
    lookup, pool = step_runners(step, str(tmp_path), 2)
    looked = lookup(rows(["a", "b", "c"]))
    assert looked[TODO].to_pylist() == [False, False, True] and looked["reason"].to_pylist() == ["made", "made", None]
    monkeypatch.setattr(CommitLog, "locate", lambda *a: (_ for _ in ()).throw(AssertionError("the pool read the log")))
    out = pool(looked)
    assert _Counting.seen == ["c"] and sorted(out["reason"].to_pylist()) == ["made"] * 3
    assert StepRunner(step, 0, str(tmp_path), 2).first is False


def test_a_lookup_in_a_compacted_part_reads_only_the_row_groups_of_its_ids(tmp_path, monkeypatch):
    """A compacted part is sorted by id in row groups of ROW_GROUP rows: looking a few ids up reads the
    groups whose id range holds them, not the whole part (at scale a fold holds millions of rows and
    every block of a rerun looks its rows up)."""
    import pyarrow.parquet as pq

    import curate.commit as commit

    monkeypatch.setattr(commit, "ROW_GROUP", 50)
    log = CommitLog(str(tmp_path), "score", "k")
    for b in range(70):
        ids = [f"c{k * 70 + b:04d}" for k in range(10)]  # blocks not in id order
        log.write(pa.table({"id": ids, "match": [None] * 10, "motion_score": [float(int(i[1:])) for i in ids]}), run=1)
    assert log.compact() and len(log.parts()) == 1
    read = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", lambda self, groups, *a, **k: read.append(list(groups)) or real(self, groups, *a, **k))
    want = ["c0003", "c0004", "c0420", "c9999"]
    index = log.locate(want)
    got = log.rows({(i, None): index[(i, None)] for i in want if (i, None) in index})
    assert {i: r["motion_score"] for i, r in got.items()} == {"c0003": 3.0, "c0004": 4.0, "c0420": 420.0}
    assert read == [[0, 8], [0, 8]]  # of 14 groups of 50 rows: the two holding those ids, for the keys and for the rows
    read.clear()
    assert log.locate(["c0001"]) == {("c0001", None): log.parts()[0]} and read == [[0]]  # never the whole index
    everything = log.rows(log.locate([f"c{k:04d}" for k in range(700)]))
    assert len(everything) == 700 and all(r["motion_score"] == float(int(i[1:])) for i, r in everything.items())


def test_a_large_folder_is_folded_one_id_range_at_a_time(tmp_path, monkeypatch):
    """Past FOLD_ROWS rows, compact never holds the folder at once: it streams the parts into one
    temporary file per id range and folds each range into a part of its own. The folds' ranges do not
    overlap, each is sorted, every (id, match) keeps its latest row (ties: the later part), nothing
    temporary is left, and lookups find every row; folding again (old folds + new parts) too."""
    import pyarrow.parquet as pq

    import curate.commit as commit

    monkeypatch.setattr(commit, "FOLD_ROWS", 200)
    monkeypatch.setattr(commit, "ROW_GROUP", 32)
    held = []
    real = commit.latest_rows
    monkeypatch.setattr(commit, "latest_rows", lambda t, keys=("id",): held.append(t.num_rows) or real(t, keys))
    log = CommitLog(str(tmp_path), "caption", "k")
    ids = [f"{(k * 7919) % 1000:03d}x" for k in range(1000)]  # not in id order
    for b in range(70):  # 70 parts: run 1, then a later run redoes every 10th id and adds a second match for a few
        part = ids[b * 10:(b + 1) * 10]
        log.write(pa.table({"id": part, "match": ["m"] * 10, "score": [1.0] * 10}), run=1)
    for b in range(0, 1000, 100):
        again = ids[b:b + 100:10]
        log.write(pa.table({"id": again, "match": ["m"] * len(again), "score": [2.0] * len(again)}), run=2)
        log.write(pa.table({"id": again[:2], "match": ["other"] * 2, "score": [3.0] * 2}), run=2)
    want = log.read(keys=("id", "match"))
    expect = sorted(zip(want["id"].to_pylist(), want["match"].to_pylist(), want["score"].to_pylist()))
    held.clear()
    assert log.compact()
    parts = log.parts()
    assert len(parts) >= 4 and max(held) <= 2 * 200  # a range at a time (quantile cuts of a sample: about FOLD_ROWS each)
    assert not [p for p in (tmp_path / "commit" / "caption" / "k").iterdir() if ".tmp-" in p.name]
    ranges = []
    for p in parts:
        t = pq.read_table(p)
        assert t["id"].to_pylist() == sorted(t["id"].to_pylist())
        ranges.append((t["id"][0].as_py(), t["id"][-1].as_py()))
    ranges.sort()
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))  # no id in two folds
    got = log.read(keys=("id", "match"))
    assert sorted(zip(got["id"].to_pylist(), got["match"].to_pylist(), got["score"].to_pylist())) == expect
    index = CommitLog(str(tmp_path), "caption", "k").locate(ids)
    rows = log.rows({k: p for k, p in index.items() if k[1] == "m"})
    assert len(index) == len(expect) == 750 and {i: r["score"] for i, r in rows.items()} == {i: s for i, m, s in expect if m == "m"}
    # fold again: the earlier folds and 65 new parts (a third run rescoring some ids)
    for b in range(65):
        log.write(pa.table({"id": [ids[b]], "match": ["m"], "score": [4.0]}), run=commit.run_stamp())  # a run after the fold
    assert log.compact()
    got = {(i, m): s for i, m, s in zip(*(log.read(keys=("id", "match"))[c].to_pylist() for c in ("id", "match", "score")))}
    assert len(got) == 750 and all(got[(ids[b], "m")] == 4.0 for b in range(65)) and got[(ids[100], "m")] == 2.0
