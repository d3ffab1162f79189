"""The output folder's layout is spelled in one place (curate/layout.py)."""

import ast
import pathlib

from curate.layout import Layout
from curate.storage import Output

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILES = {Layout.JOB, Layout.INDEX, Layout.LICENSES, Layout.ATTRIBUTION, Layout.SUMMARY, Layout.REPORT, Layout.LOCK, Layout.CARD}
FOLDERS = {Layout.TABLES, Layout.COMMIT, Layout.WORK, Layout.SHARDS, Layout.CLIPS, Layout.LATENTS, Layout.SAMPLES, Layout.DEDUP_INDEX.split("/")[0]}


def _spelled_paths(path: pathlib.Path) -> list[tuple[int, str]]:
    """String constants of `path` (docstrings aside, f-string pieces included) that name a file or a
    folder under the output folder."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}  # fmt: skip
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
            and (n.value in FILES or any(n.value.startswith(f + "/") for f in FOLDERS))]  # fmt: skip


def test_no_module_but_layout_spells_a_path_under_the_output_folder():
    sources = [p for p in (*ROOT.glob("curate/**/*.py"), *ROOT.glob("stages/*.py")) if p.name != "layout.py"]
    assert len(sources) > 40
    found = [f"{p.relative_to(ROOT)}:{line} {value!r}" for p in sources for line, value in _spelled_paths(p)]
    assert not found, "paths under OUT spelled outside curate/layout.py:\n" + "\n".join(found)


def test_the_scan_finds_a_spelled_path(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""Writes OUT/tables/x.parquet."""\n\ndef f(out, b):\n    return out.path(f"work/shards/bucket={b}.json"), "index.json"\n')
    assert sorted(_spelled_paths(bad)) == [(4, "index.json"), (4, "work/shards/bucket=")]


def test_layout_paths():
    assert Layout.clip("ab12") == "clips/ab12.mp4"
    assert Layout.table_part("clips", 42) == "tables/clips/bucket=00042/part-00000.parquet"
    assert Layout.commit("caption", "k1") == "commit/caption/k1" and Layout.commit(*Layout.CLIP_ROWS) == "commit/clips/rows"
    assert Layout.shard_plans(None) == "work/shards.json" and Layout.shard_plans(3) == "work/shards/bucket=00003.json"
    assert Layout.dedup_marks(None) == Layout.dedup_marks(0) == "work/dedup/bucket=00000.parquet"
    # what a run writes through temporary names: every folder a killed run can leave a `*.tmp-*` in
    assert set(Layout.WRITTEN) == {Layout.CLIPS, Layout.SHARDS, Layout.TABLES, Layout.WORK, Layout.LATENTS, Layout.COMMIT}


def test_a_killed_runs_temporaries_are_found_in_every_written_folder(tmp_path):
    out = Output(str(tmp_path))
    for folder in Layout.WRITTEN:
        out.write_bytes(f"{folder}/kept.bin", b"x")
        (tmp_path / folder / f"half.bin.tmp-{len(folder)}").write_bytes(b"x")
    (tmp_path / "elsewhere.tmp-1").write_bytes(b"x")  # not a folder a run writes through temporaries
    assert out.remove_temporaries() == len(Layout.WRITTEN)
    assert sorted(p.name for p in tmp_path.rglob("*.tmp-*")) == ["elsewhere.tmp-1"]
    assert all((tmp_path / folder / "kept.bin").exists() for folder in Layout.WRITTEN)
