"""Every path under the output folder, in one place: the rest of the code asks `Layout` (relative paths,
no I/O) and hands stages plain paths or URLs made from them (`Output.uri(Layout.CLIPS)`).

    OUT/job.yaml             the resolved job
    OUT/samples/             generated demo inputs (demo job only)
    OUT/clips/<clip_id>.mp4  every clip, written once
    OUT/latents/<clip_id>.npy (+ .logvar.npy, .text_emb.npy, .text_mask.npy)   precomputed VAE latents
    OUT/shards/shard-BBBBB-NNNNNN.tar   per hash bucket of the source (shard-NNNNNN.tar with shards.buckets: null)
    OUT/tables/<table>.parquet                          one file per table (older outputs; takedowns)
    OUT/tables/<table>/bucket=NNNNN/part-<hash>.parquet  or hive-partitioned: several parts per bucket, the
                                                        `bucket` column (int32) only in the folder name
    OUT/commit/<step>/<key>/part-<hash>.parquet   the commit log (curate/commit.py): what a rerun reuses;
                                                  commit/sources/rows and commit/clips/rows: the rows themselves
    OUT/work/shards/bucket=NNNNN.json   shard plans per bucket (work/shards.json without buckets): an
                                        unchanged shard is not written again
    OUT/work/dedup/bucket=NNNNN.parquet  the finalize's dedup decisions for the clips of each bucket
    OUT/dedup/signatures.parquet   the dedup index a later job's `dedup.against` compares with
    OUT/index.json, LICENSES.md, ATTRIBUTION.csv, README.md (the data card), summary.json, report.html
    OUT/.curate.lock         held by the one run writing here
"""

from __future__ import annotations


class Layout:
    JOB = "job.yaml"
    SAMPLES = "samples"
    CLIPS = "clips"
    LATENTS = "latents"
    SHARDS = "shards"
    SHARD_PREFIX = "shards/shard"  # + -BBBBB-NNNNNN.tar or -NNNNNN.tar (stages.shards)
    TABLES = "tables"
    COMMIT = "commit"
    WORK = "work"
    SHARD_PLANS = "work/shards"
    DEDUP_MARKS = "work/dedup"
    DEDUP_INDEX = "dedup/signatures.parquet"
    INDEX = "index.json"
    LICENSES = "LICENSES.md"
    ATTRIBUTION = "ATTRIBUTION.csv"
    CARD = "README.md"
    SUMMARY = "summary.json"
    REPORT = "report.html"
    LOCK = ".curate.lock"
    # the row logs: (step, key) of commit/sources/rows (the source rows each run saw, with their scenes)
    # and commit/clips/rows (each block's final clip rows)
    SOURCE_ROWS = ("sources", "rows")
    CLIP_ROWS = ("clips", "rows")
    # the folders a run writes through temporary names (a killed run's `*.tmp-*` are removed from them)
    WRITTEN = (CLIPS, SHARDS, TABLES, WORK, LATENTS, COMMIT)

    @staticmethod
    def clip(clip_id: str) -> str:
        return f"{Layout.CLIPS}/{clip_id}.mp4"

    @staticmethod
    def table_file(name: str) -> str:
        """A table as one file (older outputs, takedowns, `shards.buckets: null`)."""
        return f"{Layout.TABLES}/{name}.parquet"

    @staticmethod
    def table_folder(name: str) -> str:
        """A hive-partitioned table's folder."""
        return f"{Layout.TABLES}/{name}"

    @staticmethod
    def table_bucket(name: str, bucket: int) -> str:
        return f"{Layout.TABLES}/{name}/bucket={bucket:05d}"

    @staticmethod
    def table_part(name: str, bucket: int) -> str:
        return f"{Layout.table_bucket(name, bucket)}/part-00000.parquet"

    @staticmethod
    def commit(step: str, key: str | None = None) -> str:
        """A step's commit log (under one settings key)."""
        return f"{Layout.COMMIT}/{step}" + (f"/{key}" if key is not None else "")

    @staticmethod
    def shard_plans(bucket: int | None) -> str:
        return "work/shards.json" if bucket is None else f"{Layout.SHARD_PLANS}/bucket={bucket:05d}.json"

    @staticmethod
    def dedup_marks(bucket: int | None) -> str:
        return f"{Layout.DEDUP_MARKS}/bucket={bucket or 0:05d}.parquet"
