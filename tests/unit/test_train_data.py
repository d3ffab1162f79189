"""The shard reader: every shard read once per epoch across ranks and workers, batches of one latent shape,
no sample dropped, resuming at a batch position gives the rest of the same stream."""

import numpy as np
import pytest
import torch

from curate.train.data import DataError, ShardStream, latent_norm, normalize, probe, reader_shards, shard_urls
from tests.train_shards import random_clips, write_shards

SHAPES = ((4, 2, 4, 4), (4, 1, 4, 6))


@pytest.mark.parametrize("n_shards,readers", [(7, 4), (4, 4), (9, 2), (3, 4)])
def test_each_shard_is_read_by_one_reader_per_epoch(n_shards, readers):
    urls = [f"s{i}.tar" for i in range(n_shards)]
    for epoch in range(3):
        parts = [reader_shards(urls, epoch, 0, r, readers) for r in range(readers)]
        if n_shards >= readers:
            got = sorted(u for p, every in parts for u in p)
            assert got == sorted(urls) and all(every is None for _, every in parts)
        else:  # fewer shards than readers: everyone reads everything, keeps every `readers`-th sample
            assert all(sorted(p) == sorted(urls) and every == readers for p, every in parts)
    # the order changes between epochs, identically on every rank
    assert reader_shards(urls, 0, 0, 0, 1)[0] == reader_shards(urls, 0, 0, 0, 1)[0]
    assert any(reader_shards(urls, e, 0, 0, 1)[0] != reader_shards(urls, 0, 0, 0, 1)[0] for e in range(1, 4)) or n_shards < 3


def test_batches_hold_one_latent_shape_and_every_sample_comes_round(tmp_path):
    clips = random_clips(11, SHAPES)
    urls = write_shards(tmp_path, clips, [4, 4, 3])
    assert shard_urls(str(tmp_path)) == urls == shard_urls(str(tmp_path / "shards"))
    assert shard_urls(str(tmp_path / "shards" / "shard-{000000..000002}.tar")) == urls
    stream = ShardStream(urls, batch_size=3, text_dim=8, shuffle_buffer=4)
    it = stream.raw_batches()
    batches = [next(it) for _ in range(11)]  # 33 samples: three passes over the 11
    for b in batches:
        assert len({s["shape"] for s in b}) == 1 and len(b) == 3
    keys = [s["key"] for b in batches for s in b]
    # partial buckets carry over into the next epoch: after 3 epochs all but at most (shapes x (batch - 1)) are used 3 times
    counts = {k: keys.count(k) for k in {c["key"] for c in clips}}
    assert sum(counts.values()) == 33 and all(c >= 2 for c in counts.values())
    batch = stream.collate(batches[0])
    assert batch["x"].shape[0] == 3 and batch["x"].dtype == torch.float32
    assert batch["text"].shape == (3, 1, 8) and not batch["mask"].any()  # no text: the model's empty-text embedding


def test_resuming_at_a_batch_gives_the_rest_of_the_stream_with_workers(tmp_path):
    urls = write_shards(tmp_path, random_clips(10, SHAPES), [3, 3, 2, 2])

    def keys(start, n, workers):
        loader = torch.utils.data.DataLoader(ShardStream(urls, 2, 8, start_batch=start, shuffle_buffer=3),
                                             batch_size=None, num_workers=workers)
        it, out = iter(loader), []
        for _ in range(n):
            out.append(next(it)["keys"])
        return out

    full = keys(0, 12, 2)
    assert keys(5, 7, 2) == full[5:]
    assert keys(0, 12, 0) != full  # one reader reads in another order than two: the split is real
    assert keys(3, 6, 0) == keys(0, 9, 0)[3:]


def test_ranks_read_disjoint_samples_within_an_epoch(tmp_path):
    clips = random_clips(12, SHAPES[:1])
    urls = write_shards(tmp_path, clips, [3, 3, 3, 3])
    seen = []
    for rank in range(2):
        it = ShardStream(urls, 3, 8, rank=rank, world=2, shuffle_buffer=2).raw_batches()
        seen.append({s["key"] for _ in range(2) for s in next(it)})  # 2 batches of 3 = one epoch of 6 samples
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 12


def test_text_embeddings_and_clear_errors(tmp_path):
    rng = np.random.default_rng(0)
    clips = random_clips(4, SHAPES[:1])
    for c in clips[:2]:
        c["text_emb"], c["text_mask"] = rng.standard_normal((5, 16)), np.array([1, 1, 1, 0, 0], np.uint8)
    urls = write_shards(tmp_path / "a", clips, [4])
    info = probe(urls)
    assert (info["in_channels"], info["text_dim"], info["text_len"]) == (4, 16, 5)
    b = ShardStream(urls, 4, 16, shuffle_buffer=1).collate(next(ShardStream(urls, 4, 16, shuffle_buffer=1).raw_batches()))
    assert b["text"].shape == (4, 5, 16) and sorted(b["mask"].sum(1).tolist()) == [0, 0, 3, 3]
    with pytest.raises(DataError, match="width 8"):
        ShardStream(urls, 4, 8).collate(next(ShardStream(urls, 4, 8, shuffle_buffer=1).raw_batches()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .tar shards"):
        shard_urls(str(tmp_path / "empty"))
    # too few samples for the readers: a clear error, not an endless wait
    with pytest.raises(DataError, match="got no sample"):
        next(ShardStream(urls, 1, 16, rank=5, world=8).raw_batches())  # 4 samples, reader 5 of 8 keeps none


def test_latent_normalisation_follows_the_vae_rule():
    z = np.ones((2, 1, 1, 1), np.float32) * 3
    wan = latent_norm({"latent_channel_mean": [1, 2], "latent_channel_std": [2, 1]}, 2)
    assert normalize(z, wan).ravel().tolist() == [1.0, 1.0]
    assert latent_norm({"latent_channel_mean": [0.0] * 16, "latent_channel_std": [1.0] * 16}, 4) is None  # stats for another channel count
    sd = latent_norm({"latent_scaling_factor": 0.5, "latent_shift_factor": 1.0}, 2)
    assert normalize(z, sd).ravel().tolist() == [1.0, 1.0]
