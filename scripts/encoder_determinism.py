"""Does the same clip always encode to the same H.264 bitstream? Per x264 setting, after heap churn.

    python scripts/encoder_determinism.py [--encodes 150] [--params default mbtree=0 bframes=0 ...]

encodes one 16-frame 64x64 clip (the test suite's smooth colour waves) ``--encodes`` times for each x264
setting, filling and freeing heap memory with random bytes before every encode and frame (as unrelated work
between two runs would), and prints how many distinct bitstreams came out. "default" is x264's own settings
(what mmg_core.media used before mbtree was turned off); "pack" is what mmg_core.media.write_mp4 uses now.
With mbtree on, this x264 build's output depended on leftover memory; about 30 s with the defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from collections import Counter
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mmg_core.media import X264_PARAMS  # noqa: E402

DEFAULT_SETTINGS = ("default", "pack", "bframes=0", "rc-lookahead=0", "aq-mode=0", "trellis=0")


def wave_clip(frames: int = 16, size: int = 64) -> np.ndarray:
    """(F, H, W, 3) uint8 smooth colour waves whose brightness rises with the frame."""
    t, y, x, c = np.ogrid[:frames, :size, :size, :3]
    wave = 60 * np.sin(x / 9 + c) * np.cos(y / 7 + t / 5)
    return np.clip(100 + 10 * t + wave, 0, 255).astype(np.uint8)


def churn_heap(rng: np.random.Generator) -> None:
    """Fill and free some heap memory with random bytes (what an encoder may later read uninitialised)."""
    junk = [os.urandom(int(n)) for n in rng.integers(1_000, 20_000, 50)]
    del junk


def bitstream_digest(clip: np.ndarray, params: str | None, rng: np.random.Generator) -> str:
    """MD5 of the H.264 packets of ``clip`` encoded at CRF 18 with x264-params ``params`` (None: x264's own)."""
    churn_heap(rng)
    container = av.open(io.BytesIO(), mode="w", format="mp4")
    stream = container.add_stream("libx264", rate=10)
    stream.height, stream.width = clip.shape[1:3]
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": "18", **({"x264-params": params} if params else {})}
    digest = hashlib.md5()
    for index, pixels in enumerate(clip):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        churn_heap(rng)
        for packet in stream.encode(frame):
            digest.update(bytes(packet))
    for packet in stream.encode(None):
        digest.update(bytes(packet))
    container.close()
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encodes", type=int, default=150, help="encodes per setting")
    parser.add_argument("--params", nargs="+", default=list(DEFAULT_SETTINGS),
                        help='x264-params strings; "default" = none, "pack" = mmg_core.media.X264_PARAMS')
    args = parser.parse_args(argv)
    clip = wave_clip()
    rng = np.random.default_rng(0)
    print(f"{args.encodes} encodes per setting of a {clip.shape[0]}-frame {clip.shape[2]}x{clip.shape[1]} clip "
          f"(x264 via PyAV {av.__version__}):")
    for setting in args.params:
        params = {"default": None, "pack": X264_PARAMS}.get(setting, setting)
        distinct = Counter(bitstream_digest(clip, params, rng) for _ in range(args.encodes))
        label = f"{setting} ({params})" if setting == "pack" else setting
        print(f"  {label}: {len(distinct)} distinct bitstream(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
