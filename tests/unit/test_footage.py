"""More real footage from Debian's packages (curate.bench.footage): a package is fetched from a mirror,
checked and unpacked the way the real ones are; what is there already is not fetched again; bytes that
are not the ones named are an error, never a video; the bench and the training script take the folder."""

import hashlib
import io
import os
import tarfile

import pytest

from curate.bench import footage as F
from curate.bench import watermark_train as T


def _deb(members: dict[str, bytes]) -> bytes:
    """A Debian package as dpkg-deb builds one: an ar archive of debian-binary, control.tar.xz, data.tar.xz."""
    def tar(files):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    out = b"!<arch>\n"
    for name, body in (("debian-binary", b"2.0\n"), ("control.tar.xz", tar({"./control": b"Package: x\n"})), ("data.tar.xz", tar(members))):
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode() + body + (b"\n" if len(body) & 1 else b"")
    return out


def test_a_package_is_fetched_checked_and_unpacked_once(tmp_path, monkeypatch):
    video = open(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "videos", "counter.mp4"), "rb").read()
    import gzip

    deb = _deb({"./usr/share/doc/x/clip.mp4.gz": gzip.compress(video), "./usr/share/x/other.avi": b"not this one"})
    mirror = tmp_path / "mirror"
    (mirror / "pool").mkdir(parents=True)
    (mirror / "pool" / "x.deb").write_bytes(deb)
    monkeypatch.setattr(F, "PACKAGES", {"x": ("pool/x.deb", hashlib.sha256(deb).hexdigest())})
    monkeypatch.setattr(F, "VIDEOS", {"clip.mp4": ("x", "./usr/share/doc/x/clip.mp4.gz", hashlib.sha256(video).hexdigest(), "a clip", "MIT")})
    said = []
    got = F.fetch(str(tmp_path / "out"), mirror=(mirror.as_uri() + "/"), log=said.append)
    assert open(got["clip.mp4"], "rb").read() == video and len(said) == 1  # gunzipped, the named bytes
    (mirror / "pool" / "x.deb").unlink()
    assert F.fetch(str(tmp_path / "out"), mirror=(mirror.as_uri() + "/"), log=said.append) == got and len(said) == 1  # not fetched again
    # a package whose bytes are not the ones named is refused before anything is unpacked
    (mirror / "pool" / "x.deb").write_bytes(deb[:-1] + b"x")
    with pytest.raises(ValueError, match="sha256"):
        F.fetch(str(tmp_path / "again"), mirror=(mirror.as_uri() + "/"))
    assert not os.path.exists(tmp_path / "again" / "clip.mp4")
    # so is a video whose bytes are not the ones named, inside a package that is
    (mirror / "pool" / "x.deb").write_bytes(deb)
    monkeypatch.setattr(F, "VIDEOS", {"clip.mp4": ("x", "./usr/share/doc/x/clip.mp4.gz", "0" * 64, "a clip", "MIT")})
    with pytest.raises(ValueError, match="clip.mp4.gz: sha256"):
        F.fetch(str(tmp_path / "again"), mirror=(mirror.as_uri() + "/"))
    assert os.listdir(tmp_path / "again") == []
    with pytest.raises(ValueError, match="not a Debian package"):
        F.deb_data(b"PK\x03\x04")


def test_the_tables_name_every_video_once_with_its_package_licence_and_shots():
    assert set(F.VIDEOS) == set(F.SHOTS) == {name for name, _, _ in F.SEGMENTS}
    for name, (package, member, sha, what, licence) in F.VIDEOS.items():
        assert package in F.PACKAGES and member.startswith(("./usr/share/", "./usr/lib/"))
        assert len(sha) == 64 and what and licence
        assert all(0 <= a < b for a, b in F.SHOTS[name])
    assert not set(F.VIDEOS) & set(T.FOOTAGE)  # other videos than ../shared/data's
    table = T.footage("/v", "/more")
    assert set(table) == set(T.FOOTAGE) | set(F.SHOTS) and table["g1.avi"] == ("/more/g1.avi", [(0, 16)], (0.0, 1.0))
    assert set(T.footage("/v")) == set(T.FOOTAGE)


def test_the_bench_and_the_training_script_say_what_is_missing(tmp_path, capsys):
    from curate.bench import watermark as W

    with pytest.raises(SystemExit):
        W.main(["--footage", str(tmp_path)])
    assert "python -m curate.bench.footage --dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        T.main(["--footage", str(tmp_path), "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert "missing footage" in err and "g1.avi" in err and "bikes.mp4" not in err
    with pytest.raises(SystemExit):  # a name of the extra footage may be held out only when it is used
        T.main(["--hold-out", "g1.avi", "--out", str(tmp_path / "x.pt")])
    assert "g1.avi not among the training footage" in capsys.readouterr().err
