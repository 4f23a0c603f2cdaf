"""Print the path of Big Buck Bunny (CC-BY 3.0, Blender Foundation), fetching it once if needed.

The film ships inside the ``moviepy==2.2.1`` source archive on PyPI (docs/.../moviepy_10_minutes.zip,
resources/bbb.mp4: 596 s, 1280x720, 24 fps, AAC stereo). This downloads that archive with pip (PyPI
only, no model hub) into ``~/.cache/mmg/bbb`` and extracts the film there; later calls only print
the path. Used by the CAM-Sync calibration:

    python -m mmg_core calibrate-sync --film "$(python scripts/get_big_buck_bunny.py)" --out eval/sync_calibration
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

SDIST = "moviepy==2.2.1"
ZIP_MEMBER = "moviepy-2.2.1/docs/_static/medias/getting_started/moviepy_10_minutes/moviepy_10_minutes.zip"
FILM_MEMBER = "moviepy_10_minutes/resources/bbb.mp4"
FILM_BYTES = 50_195_281  # size of bbb.mp4 in that archive: a truncated extraction is caught


def fetch(cache: Path) -> Path:
    film = cache / "bbb.mp4"
    if film.is_file() and film.stat().st_size == FILM_BYTES:
        return film
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                        "-d", scratch, SDIST], check=True, stdout=sys.stderr)
        archive = next(Path(scratch).glob("moviepy-2.2.1.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extract(ZIP_MEMBER, scratch, filter="data")
        with zipfile.ZipFile(Path(scratch) / ZIP_MEMBER) as bundle:
            partial = cache / "bbb.mp4.partial"
            partial.write_bytes(bundle.read(FILM_MEMBER))
    if partial.stat().st_size != FILM_BYTES:
        raise RuntimeError(f"{partial} has {partial.stat().st_size} bytes, expected {FILM_BYTES}")
    partial.replace(film)
    return film


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "mmg" / "bbb"), help="where to keep the film")
    print(fetch(Path(parser.parse_args(argv).cache)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
