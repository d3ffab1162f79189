"""More real footage for the watermark bench and its training: videos that Debian ships in its packages.

The real videos in ../shared/data are eleven, two of them fixed cameras. A learned watermark detector
trained and measured on them alone takes an unseen fixed camera's still scene for an overlay (README,
Benchmarks). Debian's archive ships more real footage inside packages, under free licences: physics
experiments filmed by a fixed camera (pymecavideo), OpenCV's sample and tutorial videos, a phone video
(forensics-samples), a city shot (Kivy's examples), a bird (imageio's test resources). This module
fetches those packages from the Debian archive (a package registry, reachable where PyPI is), checks
each package's and each video's sha256, and extracts the videos into a folder of their own, never into
the project. Eleven videos, six of them fixed cameras. Left out: pymecavideo's Force_constante.avi and
Principe_inertie.avi (their first frame is no keyframe: grey blocks that stay put cover the picture, a
damaged file rather than a scene), its retroMars2018.avi (drawn planets on black), OpenCV's
Megamind.avi (an animated trailer, a cut every few seconds) and forensics-samples' screen recording:

    python -m curate.bench.footage [--dir ~/.cache/curate/footage]

Then `python -m curate.bench.watermark --footage DIR` measures on them and
`python -m curate.bench.watermark_train --footage DIR` trains over them (`--hold-out` to leave some out).
Like ../shared/data, they are for tests and measurements: each keeps its own licence (`VIDEOS`).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import urllib.request

MIRROR = "https://deb.debian.org/debian/"
DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "curate", "footage")

# Debian bookworm packages: pool path, sha256 of the .deb (the archive's own Packages index gives it).
PACKAGES = {
    "opencv-doc": ("pool/main/o/opencv/opencv-doc_4.6.0+dfsg-12_all.deb",
                   "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a"),
    "python3-mecavideo": ("pool/main/p/pymecavideo/python3-mecavideo_8.0~rc5-1_all.deb",
                          "ddbf099d3d5a412ee664a8628d331752b17abb4b857e3a100f694eed9670df78"),
    "python-kivy-examples": ("pool/main/k/kivy/python-kivy-examples_2.1.0-1_all.deb",
                             "ad619d8291a888b59e6f1942db52ad7f3c03373c195d6fc449fbf01721b4f4a1"),
    "python3-imageio": ("pool/main/p/python-imageio/python3-imageio_2.4.1-5_all.deb",
                        "4467164fe9fc96f24ef2a50133ef71734294116845c3fc28ca5b102e1d6041e8"),
    "forensics-samples-files": ("pool/main/f/forensics-samples/forensics-samples-files_1.1.4-5_all.deb",
                                "8710c751be1a71a88e343540ea1a5cab1fd349c2bcdf07626a27cfe68689e7c4"),
}
_MECA = "./usr/share/pymecavideo/data/video/"
_MECA_LICENCE = "CC-BY-SA-3.0, (C) 2007 Benoit Markey (pymecavideo's example videos, debian/copyright)"
_OPENCV_LICENCE = "Apache-2.0, OpenCV (opencv-doc, debian/copyright)"
# name: (package, path in the package (".gz": gzipped there), sha256 of the video, what it is, licence)
VIDEOS = {
    "Effet_force_magnetique.ogv": ("python3-mecavideo", _MECA + "Effet_force_magnetique.ogv",
                                   "14fd069df7ff3ba4ac743973dcd7bf07f3b6de27686dce500e51dd469271709e",
                                   "fixed camera from above: two pucks, a hand, 400x304, 1.3 s (Theora)", _MECA_LICENCE),
    "balle1-vp9.avi": ("python3-mecavideo", _MECA + "balle1-vp9.avi",
                       "7d1e3de70031f8cdae5bb9727b0d1023b3126c89b5dec1c622175bb27610f35a",
                       "fixed camera: a ball falling in a classroom, 320x240, 187 fps, 1.6 s (VP9 in AVI)", _MECA_LICENCE),
    "balle-jbart.mp4": ("python3-mecavideo", _MECA + "balle-jbart.mp4",
                        "85a4c1934e97e4175582c3f2e233982a4a98ad41ad3415d1f3aa5c0fda04e3dc",
                        "fixed camera: a ball thrown before a blackboard, 720x576, 10 s", _MECA_LICENCE),
    "g1.avi": ("python3-mecavideo", _MECA + "g1.avi", "0f6fbf3feb2842d06fc45f2f736f67184988be058c4e6ea2b24b332d8d36714f",
               "fixed camera outdoors: a cyclist before a goal, 400x300, 16 frames", _MECA_LICENCE),
    "g2.avi": ("python3-mecavideo", _MECA + "g2.avi", "4ca02dfcef93603f0a9914c5e34d94ba0aa4dc82588008cad7fdacdc25b7cf50",
               "the same fixed camera, another cyclist, 400x300, 16 frames", _MECA_LICENCE),
    "tree.avi": ("opencv-doc", "./usr/share/doc/opencv-doc/examples/data/tree.avi",
                 "4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc",
                 "fixed camera: a tree in the wind by a wall, 320x240, 68 frames (Cinepak)", _OPENCV_LICENCE),
    "box.mp4": ("opencv-doc", "./usr/share/doc/opencv-doc/opencv4/html/box.mp4.gz",
                "62b744b99403f899707c43398a3822441add6160379ab6dd6c12bde9e3075f8d",
                "a box held and turned by hand over a table, 640x480, 15 s", _OPENCV_LICENCE),
    "cup.mp4": ("opencv-doc", "./usr/share/doc/opencv-doc/opencv4/html/cup.mp4.gz",
                "37db9cee98f70b1458985a15ad2e5b0183e90e24c281b534afcf812e5986154f",
                "a cup moved by hand before a white wall, 640x480, 8 s", _OPENCV_LICENCE),
    "cityCC0.mpg": ("python-kivy-examples", "./usr/share/kivy-examples/widgets/cityCC0.mpg",
                    "fe129d341e5b1a174336b956bf16d2b215a506c4a07f6fa3351a1e9b58ca0279",
                    "city towers, moving camera, 720x405, 7.6 s, one cut (MPEG-2)", "CC0 (Kivy's examples; Expat package)"),
    "cockatoo.mp4": ("python3-imageio", "./usr/lib/python3/dist-packages/imageio/resources/images/cockatoo.mp4",
                     "5fde35f5a288ca86e216d2dc28188ab64b4560d3021f273faefdf0de80f38aa5",
                     "a cockatoo close up, hand-held, 1280x720, 14 s (yuv444p)", "BSD-2-Clause (imageio, debian/copyright)"),
    "VID_20191220_170832.mp4": ("forensics-samples-files", "./usr/share/forensics-samples/original-files/movie1/VID_20191220_170832.mp4",
                                "9b0710a436413f75cc3cd1c1048aa3c4d7c28f76f51ef6a25413d0018d22ec99",
                                "a phone video of a dog on a floor, 1920x1080, 1.5 s",
                                "CC-BY-SA-4.0, (C) 2019-2020 Joao Eriberto Mota Filho (forensics-samples, debian/copyright)"),
}

# The watermark bench's segments of these videos (file, start_s, seconds): one shot each, the picture
# moving; 7 of the 14 from fixed cameras. (ffmpeg's -ss into cockatoo.mp4 at 8.5 s decodes grey smears,
# though the file plays whole: its one segment starts at 0.5 s.)
SEGMENTS = [
    ("Effet_force_magnetique.ogv", 0.0, 1.3), ("balle1-vp9.avi", 0.0, 1.6), ("balle-jbart.mp4", 0.5, 4.0), ("balle-jbart.mp4", 5.5, 4.0),
    ("g1.avi", 0.0, 0.64), ("g2.avi", 0.0, 0.64), ("tree.avi", 0.0, 10.0), ("box.mp4", 1.0, 4.0), ("box.mp4", 9.0, 4.0),
    ("cup.mp4", 1.0, 4.0), ("cityCC0.mpg", 0.6, 4.0), ("cityCC0.mpg", 5.3, 2.4), ("cockatoo.mp4", 0.5, 4.0),
    ("VID_20191220_170832.mp4", 0.0, 1.45),
]
# Their shots as [first, end) decode indices, for watermark_train (cuts found by frame differences and
# looked at): every frame is picture, nothing to crop.
SHOTS = {
    "Effet_force_magnetique.ogv": [(0, 34)],
    "balle1-vp9.avi": [(0, 295)], "balle-jbart.mp4": [(0, 255)], "g1.avi": [(0, 16)], "g2.avi": [(0, 16)], "tree.avi": [(0, 68)],
    "box.mp4": [(0, 455)], "cup.mp4": [(0, 217)], "cityCC0.mpg": [(0, 116), (116, 190)], "cockatoo.mp4": [(0, 280)],
    "VID_20191220_170832.mp4": [(0, 41)],
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def deb_data(deb: bytes) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an `ar` archive: a 8-byte magic, then 60-byte headers)."""
    if deb[:8] != b"!<arch>\n":
        raise ValueError("not a Debian package (no ar magic)")
    at = 8
    while at + 60 <= len(deb):
        name, size = deb[at:at + 16].decode().strip().rstrip("/"), int(deb[at + 48:at + 58].decode().strip())
        body = deb[at + 60:at + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        at += 60 + size + (size & 1)
    raise ValueError("no data.tar member in the package")


def fetch(dest: str = DEFAULT_DIR, mirror: str = MIRROR, log=print) -> dict[str, str]:
    """Put every video of `VIDEOS` in `dest` (name: path), downloading only the packages of those not
    there yet with the right sha256. A package or video whose sha256 differs is an error, not a file."""
    os.makedirs(dest, exist_ok=True)
    have = {}
    for name, (_, _, sha, _, _) in VIDEOS.items():
        path = os.path.join(dest, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                if _sha256(f.read()) == sha:
                    have[name] = path
    for package in sorted({VIDEOS[n][0] for n in VIDEOS if n not in have}):
        pool, sha = PACKAGES[package]
        log(f"downloading {mirror}{pool}")
        with urllib.request.urlopen(mirror + pool, timeout=300) as r:
            deb = r.read()
        if _sha256(deb) != sha:
            raise ValueError(f"{pool}: sha256 {_sha256(deb)}, expected {sha}")
        with deb_data(deb) as tar:
            for name, (pkg, member, want, _, _) in VIDEOS.items():
                if pkg != package or name in have:
                    continue
                data = tar.extractfile(member).read()
                if member.endswith(".gz"):
                    data = gzip.decompress(data)
                if _sha256(data) != want:
                    raise ValueError(f"{package}:{member}: sha256 {_sha256(data)}, expected {want}")
                with tempfile.NamedTemporaryFile(dir=dest, delete=False) as f:
                    f.write(data)
                shutil.move(f.name, os.path.join(dest, name))
                os.chmod(os.path.join(dest, name), 0o644)
                have[name] = os.path.join(dest, name)
    return {n: have[n] for n in VIDEOS}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=DEFAULT_DIR, help="where the videos go (default %(default)s)")
    ap.add_argument("--mirror", default=MIRROR)
    args = ap.parse_args(argv)
    for name, path in fetch(args.dir, args.mirror).items():
        print(f"{path}  {VIDEOS[name][3]}; {VIDEOS[name][4]}")


if __name__ == "__main__":
    main()
