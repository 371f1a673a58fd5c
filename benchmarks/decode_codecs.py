"""Decode cost per source codec and height, through the project's own decode path.

    python benchmarks/decode_codecs.py [--seconds 30] [--repeat 3]

What a worker pays to turn a download into clip frames depends on the format it downloaded:
the codec (H.264, VP9, AV1) and the height (144p to 720p). `genie-pipeline plan` reads this
file for the format `download.format` selects.

Footage: game play rendered by the sample corpus's agents (genie_pipeline/corpus/render.py),
half CoinRun (procgen: textured backgrounds, scrolling) and half Atari (pitfall, mario_bros:
flat colours, sprites), `--seconds` in all at 30 FPS, upscaled to 1280×720 and written once
as a near-lossless H.264 mezzanine. Each cell is the mezzanine encoded by the imageio-ffmpeg
binary at that height (16:9) with the codec's encoder at quality-targeted settings (no
bitrate given: each encoder spends what the footage needs, like a streaming site's ladder),
a keyframe every 5 s:

- h264: libx264 -preset medium -crf 23, mp4
- vp9:  libvpx-vp9 -crf 32 -b:v 0 -deadline good -cpu-used 4, webm
- av1:  libsvtav1 -preset 8 -crf 35 (else libaom-av1 -cpu-used 8 -crf 35), mp4

One more cell, `combined`: what a site's one-file format costs (YouTube's format 18, the
fallback where a site has nothing video-only): the H.264 360p encode muxed with AAC audio at
96 kbit/s (a 440 Hz tone: AAC at a set bitrate spends about the same on any sound); its
bytes include the audio, its decode demuxes and skips it. Every cell records
`bytes_per_source_s` beside the kbit/s. `--heights` measures part of the ladder and
`--merge` keeps the other cells of an existing result.

A codec whose encoder this ffmpeg lacks, or whose decoder PyAV lacks, is listed under
`not_measured` with the reason, and `plan` says "not measured" for it instead of a number.

Decode: `ingest.decode.iter_frames` with the default clips section (PyAV, one codec thread,
the one filter graph: fps to 10, scale to 160×90, RGB), every frame consumed, as
`ingest.process` does before cut detection. CPU seconds of this process per second of
source, the least of `--repeat` runs (the least disturbed by other jobs on the machine).
Also recorded per cell: the decoder PyAV chose, and the encode's bitrate (kbit/s of video,
no audio) on this footage; a site's bitrate for other footage differs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEIGHTS = {144: 256, 240: 426, 360: 640, 720: 1280}  # YouTube's 16:9 ladder (width even)
FPS = 30
GOP = 5 * FPS
# codec -> [(encoder, container, encoder options)], first available wins
ENCODERS = {
    "h264": [("libx264", "mp4", ["-preset", "medium", "-crf", "23", "-pix_fmt", "yuv420p"])],
    "vp9": [("libvpx-vp9", "webm", ["-crf", "32", "-b:v", "0", "-deadline", "good", "-cpu-used", "4",
                                    "-row-mt", "1", "-pix_fmt", "yuv420p"])],
    "av1": [("libsvtav1", "mp4", ["-preset", "8", "-crf", "35", "-pix_fmt", "yuv420p"]),
            ("libaom-av1", "mp4", ["-cpu-used", "8", "-crf", "35", "-row-mt", "1", "-pix_fmt", "yuv420p"])],
}
# the PyAV decoder names that can decode each codec (FFmpeg's native av1 decoder needs a
# hardware accelerator; dav1d is the software one)
DECODERS = {"h264": ["h264"], "vp9": ["vp9", "libvpx-vp9"], "av1": ["libdav1d", "libaom-av1"]}


def cpu() -> float:
    # this process's threads only: the decode runs in-process (PyAV), the encodes are children
    return time.process_time()


def ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def encoders_available() -> set[str]:
    out = subprocess.run([ffmpeg(), "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith(" V")}


def decoder_available(codec: str) -> str | None:
    import av

    for name in DECODERS[codec]:
        try:
            av.codec.Codec(name, "r")
            return name
        except Exception:  # noqa: BLE001 — not built into this PyAV
            continue
    return None


def render_mezzanine(path: Path, seconds: float) -> None:
    """Half CoinRun, half Atari, at FPS, 1280×720 (bilinear upscale), near-lossless H.264."""
    from genie_pipeline.corpus.encode import resize_rgb
    from genie_pipeline.corpus.render import AtariAgent, CoinRunAgent

    n = int(seconds * FPS)
    parts = [(CoinRunAgent(seed=1), n // 2), (AtariAgent("pitfall", 2), n // 4),
             (AtariAgent("mario_bros", 3), n - n // 2 - n // 4)]
    enc = subprocess.Popen([ffmpeg(), "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                            "-s", "1280x720", "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-preset", "veryfast",
                            "-crf", "8", "-pix_fmt", "yuv420p", "-g", str(GOP), str(path)], stdin=subprocess.PIPE)
    for agent, frames in parts:
        # CoinRun steps at 15/s: each step shows for two 30 FPS frames, as a capture would
        hold = 2 if isinstance(agent, CoinRunAgent) else 1
        for i in range(frames):
            if i % hold == 0:
                rgb = np.ascontiguousarray(resize_rgb(agent.step(), 1280, 720))
            enc.stdin.write(rgb.tobytes())
    enc.stdin.close()
    if enc.wait() != 0:
        raise SystemExit("mezzanine encode failed")


def encode(mezz: Path, out: Path, encoder: str, opts: list[str], height: int) -> None:
    subprocess.run([ffmpeg(), "-loglevel", "error", "-y", "-i", str(mezz), "-an",
                    "-vf", f"scale={HEIGHTS[height]}:{height}:flags=bicubic", "-c:v", encoder, *opts,
                    "-g", str(GOP), "-threads", "2", str(out)], check=True)


AUDIO_KBPS = 96  # YouTube's format 18 carries AAC at about 96 kbit/s


def encode_combined(video: Path, out: Path) -> None:
    """`video` with an AAC track muxed in, the video stream copied (one file, audio and video)."""
    subprocess.run([ffmpeg(), "-loglevel", "error", "-y", "-i", str(video), "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=44100", "-shortest", "-map", "0:v", "-map", "1:a",
                    "-c:v", "copy", "-c:a", "aac", "-b:a", f"{AUDIO_KBPS}k", "-ac", "2", str(out)], check=True)


def cell_of(codec: str, height: int, path: Path, repeat: int, **extra) -> dict:
    spent, frames, used, seconds = decode_cost(path, repeat)
    size = path.stat().st_size
    return {"codec": codec, "height": height, "width": HEIGHTS[height], **extra, "decoder": used,
            "source_seconds": round(seconds, 3), "clip_frames_out": frames,
            "kbps": round(size * 8 / seconds / 1000, 1), "bytes_per_source_s": round(size / seconds),
            "decode_cpu_s": round(spent, 4), "decode_cpu_per_source_s": round(spent / seconds, 6)}


def decode_cost(path: Path, repeat: int) -> tuple[float, int, str, float]:
    """(least CPU-s over `repeat` decodes, frames out, decoder name, source seconds)."""
    import av

    from genie_pipeline.ingest.decode import iter_frames, probe
    from genie_pipeline.shards.config import ClipsConfig

    cfg = ClipsConfig()
    with av.open(str(path)) as c:
        decoder = c.streams.video[0].codec_context.codec.name
    seconds = probe(str(path)).duration_s
    best, frames = float("inf"), 0
    for _ in range(repeat):
        c0 = cpu()
        frames = sum(1 for _ in iter_frames(str(path), cfg))
        best = min(best, cpu() - c0)
    return best, frames, decoder, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="footage length per cell")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decode_codecs.json"))
    ap.add_argument("--heights", default=",".join(map(str, HEIGHTS)), help="the rungs to measure, e.g. 144,240,360")
    ap.add_argument("--merge", action="store_true", help="keep the cells of --out that this run does not measure")
    args = ap.parse_args()
    heights = [int(h) for h in args.heights.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bench-codecs-"))
    mezz = work / "mezzanine.mp4"
    t0 = time.time()
    render_mezzanine(mezz, args.seconds)
    print(f"mezzanine: {time.time() - t0:.0f} s", file=sys.stderr)
    have = encoders_available()
    cells, not_measured = [], []
    for codec, choices in ENCODERS.items():
        chosen = next(((e, ext, o) for e, ext, o in choices if e in have), None)
        decoder = decoder_available(codec)
        if chosen is None or decoder is None:
            why = (f"no encoder in {ffmpeg()} (tried {', '.join(e for e, _, _ in choices)})" if chosen is None
                   else f"PyAV {__import__('av').__version__} has no decoder (tried {', '.join(DECODERS[codec])})")
            not_measured.append({"codec": codec, "reason": why})
            continue
        encoder, ext, opts = chosen
        for height in heights:
            path = work / f"{codec}_{height}.{ext}"
            t0 = time.time()
            try:
                encode(mezz, path, encoder, opts, height)
            except subprocess.CalledProcessError as e:
                not_measured.append({"codec": codec, "height": height, "reason": f"{encoder} failed: {e}"})
                continue
            cell = cell_of(codec, height, path, args.repeat, encoder=encoder, encoder_options=" ".join(opts),
                           container=ext)
            cells.append(cell)
            if codec == "h264" and height == 360:  # the one-file fallback: this video plus audio
                both = work / "combined_360.mp4"
                encode_combined(path, both)
                cells.append(cell_of("combined", 360, both, args.repeat, encoder=f"{encoder} + aac",
                                     encoder_options=" ".join(opts) + f"; aac -b:a {AUDIO_KBPS}k",
                                     container="mp4"))
            print(f"{codec:5} {height:4}p  {cell['kbps']:8.1f} kbit/s  {cell['decode_cpu_per_source_s']:.5f} "
                  f"CPU-s per source s  ({cell['decoder']}; encode {time.time() - t0:.0f} s)", file=sys.stderr)
    if args.merge and Path(args.out).exists():
        measured = {(c["codec"], c["height"]) for c in cells}
        old = json.loads(Path(args.out).read_text())
        cells = [c for c in old.get("cells", []) if (c["codec"], c["height"]) not in measured] + cells
        for c in cells:  # older cells: the same number in bytes
            c.setdefault("bytes_per_source_s", round(c["kbps"] * 1000 / 8))
        cells.sort(key=lambda c: (["h264", "vp9", "av1", "combined"].index(c["codec"]), c["height"]))
    result = {
        "footage": (f"{args.seconds:g} s of game play at {FPS} FPS: half procgen CoinRun, half Atari "
                    "(pitfall, mario_bros), upscaled to 1280x720, near-lossless H.264 mezzanine"),
        "decode_path": "genie_pipeline.ingest.decode.iter_frames, default clips section (10 FPS 160x90 RGB), "
                       "one codec thread",
        "metric": f"CPU-s of the process per second of source, least of {args.repeat} runs",
        "ffmpeg": Path(ffmpeg()).name, "pyav": __import__("av").__version__,
        "cells": cells, "not_measured": not_measured,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({f"{c['codec']} {c['height']}p": c["decode_cpu_per_source_s"] for c in cells}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
