import textwrap

import pytest

from curate.config import ConfigError, JobConfig, apply_override, from_dict, load_job


def write(tmp_path, text):
    p = tmp_path / "job.yaml"
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_job_file_loads_into_frozen_dataclasses(tmp_path):
    cfg = load_job(write(tmp_path, """
        output: /tmp/out
        input: {dir: /videos, license: cc-by-4.0}
        split: {min_clip_s: 1, max_clip_s: 4.5, encode: {crf: 23}}
    """))
    assert isinstance(cfg, JobConfig)
    assert cfg.split.min_clip_s == 1.0 and isinstance(cfg.split.min_clip_s, float)
    assert cfg.split.encode.crf == 23
    assert cfg.input.dir == "/videos"
    with pytest.raises(Exception):
        cfg.output = "elsewhere"  # frozen


def test_unknown_key_names_the_key_and_what_is_allowed(tmp_path):
    path = write(tmp_path, """
        output: /tmp/out
        input: {dir: /videos}
        split: {min_clip: 1}
    """)
    with pytest.raises(ConfigError, match=r"split\.min_clip: unknown key; allowed keys: .*min_clip_s"):
        load_job(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("split.min_clip_s=abc", r"split\.min_clip_s: expected a number, got str 'abc'"),
        ("split.encode.crf=1.5", r"split\.encode\.crf: expected an integer"),
        ("split.detector=magic", r"split\.detector: expected one of 'adaptive'"),
        ("split.max_clip_s=0.5", r"min_clip_s <= max_clip_s"),
        ("shards.max_samples=0", r"max_samples"),
        ("input.extensions=.mp4", r"input\.extensions: expected a list"),
        ("dedup.embedding_similarity=1.5", r"embedding_similarity must be in \(0, 1\]"),
        ("dedup.embedding_similarity=0.95", r"needs an aesthetic section"),  # no CLIP: nothing to compare
    ],
)
def test_bad_values_name_the_key(tmp_path, override, message):
    path = write(tmp_path, "output: /tmp/out\ninput: {dir: /videos}\n")
    with pytest.raises(ConfigError, match=message):
        load_job(path, [override])


def test_overrides_are_yaml_typed_and_create_sections(tmp_path):
    path = write(tmp_path, "output: /tmp/out\ninput: {samples: {n_videos: 2}}\n")
    cfg = load_job(path, ["split.encode.max_height=360", "input.dir=/data", "input.license=MIT", "ray.num_cpus=1"])
    assert cfg.split.encode.max_height == 360
    assert cfg.input.dir == "/data" and cfg.input.license == "MIT"
    assert cfg.ray.num_cpus == 1
    assert cfg.input.samples.n_videos == 2  # kept, but unused once a dir is given


def test_required_and_exclusive_keys(tmp_path):
    with pytest.raises(ConfigError, match="output: required key is missing"):
        load_job(write(tmp_path, "input: {dir: /v}\n"))
    with pytest.raises(ConfigError, match="input.dir or input.manifest, not both"):
        load_job(write(tmp_path, "output: o\ninput: {dir: /v, manifest: m.csv}\n"))
    with pytest.raises(ConfigError, match="nothing to read"):
        load_job(write(tmp_path, "output: o\ninput: {}\n"))


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_override({}, "novalue")
    with pytest.raises(ConfigError, match="is not a section"):
        apply_override({"output": "x"}, "output.sub=1")
    with pytest.raises(ConfigError, match="cannot read job file"):
        load_job(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(write(tmp_path, "output: [unclosed\n"))


def test_shipped_jobs_load():
    from tests.conftest import ROOT

    for name in ("demo", "local", "cluster"):
        cfg = load_job(str(ROOT / "jobs" / f"{name}.yaml"))
        assert cfg.name == name


def test_from_dict_rejects_non_mapping():
    with pytest.raises(ConfigError, match="job: expected a mapping"):
        from_dict(JobConfig, ["a"])
