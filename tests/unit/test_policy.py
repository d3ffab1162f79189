"""Licence policy: SPDX expressions, attribution, opt-outs; shard grouping and extra sample files."""

import numpy as np
import pyarrow as pa
import pytest
import webdataset as wds

from curate.config import ConfigError, from_dict
from curate.layout import Layout
from schemas import CLIPS, conform
from stages.policy import LicencePolicy, PolicyConfig, alternatives
from stages.shards import ShardConfig, WriteShards, assign_shards
from tests.unit.test_shards import make_clips


def test_alternatives_of_expressions():
    assert alternatives("MIT") == (frozenset({"MIT"}),)
    assert set(alternatives("MIT OR (Apache-2.0 AND CC-BY-4.0)")) == {frozenset({"MIT"}), frozenset({"Apache-2.0", "CC-BY-4.0"})}
    assert alternatives("GPL-2.0-only WITH Classpath-exception-2.0") == (frozenset({"GPL-2.0-only"}),)
    assert alternatives(None) == alternatives("") == (frozenset({"NOASSERTION"}),)
    assert alternatives("LicenseRef-acme") == (frozenset({"LicenseRef-acme"}),)


@pytest.mark.parametrize(
    "license, allowed, expected",
    [
        ("MIT OR GPL-3.0-only", ("MIT",), True),  # any alternative
        ("GPL-3.0-only OR MIT", ("MIT",), True),
        ("MIT AND GPL-3.0-only", ("MIT",), False),  # all of them
        ("MIT AND Apache-2.0", ("MIT", "Apache-2.0"), True),
        ("NOASSERTION", ("MIT",), False),  # unknown is denied...
        ("NOASSERTION", ("NOASSERTION",), True),  # ...unless listed
        (None, ("MIT",), False),
        ("CC-BY-NC-4.0", PolicyConfig().allowed_licenses, False),
        ("LicenseRef-acme", ("MIT",), False),
    ],
)
def test_allowed(license, allowed, expected):
    assert LicencePolicy(PolicyConfig(allowed_licenses=allowed)).decide(license, author="A").allowed is expected


def test_attribution():
    lp = LicencePolicy(PolicyConfig())
    no_credit = lp.decide("CC-BY-4.0")
    assert not no_credit.allowed and "attribution" in no_credit.why
    assert lp.decide("CC-BY-4.0", author="Ann").needs_attribution
    assert lp.decide("CC-BY-SA-4.0", attribution="Photo: Ann, 2020").allowed
    # a choice that asks less wins: CC0 needs no credit
    either = lp.decide("CC0-1.0 OR CC-BY-4.0")
    assert either.allowed and not either.needs_attribution
    relaxed = LicencePolicy(PolicyConfig(require_attribution=False)).decide("CC-BY-4.0")
    assert relaxed.allowed and relaxed.needs_attribution
    assert LicencePolicy(PolicyConfig(attribution_licenses=("MIT",))).decide("MIT").why


def test_stage_filters_only_kept_rows_and_names_the_reason(tmp_path):
    clips = make_clips(tmp_path, n=6).to_pylist()
    clips[0].update(license="CC-BY-NC-4.0")
    clips[1].update(license="CC-BY-4.0", author=None)  # no credit
    clips[2].update(license="NOASSERTION", status="filtered", reason="too_short")
    clips[3].update(license="MIT", source_id="blocked")
    table = conform(pa.Table.from_pylist(clips), CLIPS)
    out = LicencePolicy(PolicyConfig(), {"blocked": ("takedown", "taken down: dmca")})(table).to_pylist()
    assert out[0]["status"] == "filtered" and out[0]["reason"] == "licence" and "CC-BY-NC-4.0" in out[0]["error"]
    assert out[1]["reason"] == "licence" and "attribution" in out[1]["error"]
    assert (out[2]["status"], out[2]["reason"]) == ("filtered", "too_short")
    assert (out[3]["status"], out[3]["reason"]) == ("filtered", "takedown")
    assert [r["status"] for r in out[4:]] == [c["status"] for c in clips[4:]] == ["kept", "kept"]


def test_policy_section_is_strict():
    cfg = from_dict(PolicyConfig, {"allowed_licenses": ["MIT"], "opt_out": ["abc"]}, "policy")
    assert cfg.allowed_licenses == ("MIT",) and cfg.opt_out == ("abc",)
    with pytest.raises(ConfigError, match="policy.allowed"):
        from_dict(PolicyConfig, {"allowed": ["MIT"]}, "policy")
    with pytest.raises(ConfigError, match="non-empty"):
        from_dict(PolicyConfig, {"opt_out": [""]}, "policy")


def test_group_by_license_and_length_and_target_count(tmp_path):
    table = make_clips(tmp_path, n=9)
    out = assign_shards(table, ShardConfig(buckets=None, group_by=("license", "length"), length_buckets_s=(0.3,)), Layout.SHARD_PREFIX)
    for row in out.to_pylist():
        assert row["shard"].startswith(f"shards/{row['license']}/len0.3s+/shard-")
    assert len(set(out["shard"].to_pylist())) == 3
    for target in (1, 4, 9, 20):
        spread = assign_shards(table, ShardConfig(buckets=None, target_shards=target), Layout.SHARD_PREFIX)["shard"].to_pylist()
        sizes = [spread.count(s) for s in sorted(set(spread))]
        assert len(sizes) == min(target, 9) and max(sizes) - min(sizes) <= 1, (target, sizes)
    limited = assign_shards(table, ShardConfig(buckets=None, target_shards=2, max_samples=2), Layout.SHARD_PREFIX)["shard"].to_pylist()
    assert len(set(limited)) == 5  # the sample limit still holds: runs of 5 and 4 make 2+2+1 and 2+2
    with pytest.raises(ValueError, match="group_by"):
        ShardConfig(buckets=None, group_by=("colour",))


def test_latent_and_text_embedding_files_decode_with_plain_webdataset(tmp_path):
    clips = assign_shards(make_clips(tmp_path, n=2), ShardConfig(buckets=None), Layout.SHARD_PREFIX)
    latent, emb = np.arange(24, dtype=np.float16).reshape(2, 3, 4), np.ones((5, 8), np.float32)
    np.save(tmp_path / "l.npy", latent)
    np.save(tmp_path / "e.npy", emb)
    clips = clips.append_column("latent_uri", pa.array([str(tmp_path / "l.npy"), None]))
    clips = clips.append_column("text_emb_uri", pa.array([str(tmp_path / "e.npy"), None]))
    shards = WriteShards(ShardConfig(buckets=None), str(tmp_path / "out"))(clips)
    samples = list(wds.WebDataset(str(tmp_path / "out" / shards["shard"][0].as_py()), shardshuffle=False).decode())
    assert np.array_equal(samples[0]["latent.npy"], latent) and samples[0]["latent.npy"].dtype == np.float16
    assert np.array_equal(samples[0]["text_emb.npy"], emb)
    assert "latent.npy" not in samples[1] and "latent_uri" not in samples[0]["json"]
