"""Training benchmarks: loader CPU time per window (PyAV, decord, torchcodec) and training tokens/s per phase.

    .venv/bin/python benchmarks/train.py [--shards OUT_OR_GLOB] [--quick] [--out benchmarks/results/train.json]

Loader: CPU seconds of this process per 16-frame window (and windows per wall second) with one
torch thread (= one loader worker on one core), for every decoder that imports, on the same
clips in one run: each clip opened once and `windows_per_clip` windows taken from it (what the
loader does), and one clip opened per window (where seeking to the window's keyframe counts
most). CPU time, not wall time, because the machine is shared. Without --shards it writes
synthetic ingest-format shards (160 frames, 160x90, 10 FPS, keyframe every 16) to a temp dir.

Training: optimizer steps (forward + backward + AdamW) on CPU for the tiny and small model
configs at 16 frames of 90x160, tokens/s = batch * frames * tokenizer tokens per frame / s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from genie_pipeline.training import distributed as dist_lib  # noqa: E402
from genie_pipeline.training.config import TrainConfig  # noqa: E402
from genie_pipeline.training.decoders import DECODERS, make_decoder  # noqa: E402
from genie_pipeline.training.loader import WindowDataset, WindowLoader  # noqa: E402
from genie_pipeline.shards.reader import iter_tar_clips, resolve_inputs
from genie_pipeline.shards.config import ClipsConfig  # noqa: E402
from tests.fixtures.output import write_sprite_output  # noqa: E402
from genie_pipeline.training.run import build_model_config  # noqa: E402
from genie_pipeline.training.trainer import PhaseTrainer, tokens_per_frame  # noqa: E402


def bench_loader(shards: list[str], decoder: str, windows: int, windows_per_clip: int = 8) -> dict:
    torch.set_num_threads(1)
    ds = WindowDataset(shards, 8, 16, decoder=decoder, windows_per_clip=windows_per_clip, clips_per_group=8,
                       shuffle_buffer=16, seed=0)
    it = ds.iter_stream(0)
    next(it)  # warm up (imports, first shard)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while n < windows:
        n += next(it)["video"].shape[0]
    return _rates(n, time.perf_counter() - t0, time.process_time() - c0) | {"windows_per_clip": windows_per_clip}


def _rates(n: int, wall: float, cpu: float) -> dict:
    return {"cpu_ms_per_window": 1000 * cpu / n, "windows_per_s": n / wall, "windows": n, "seconds": wall,
            "cpu_seconds": cpu}


def bench_open_per_window(shards: list[str], decoder: str, windows: int) -> dict:
    """Baseline: a fresh decoder open + decode for every random window."""
    import numpy as np

    torch.set_num_threads(1)
    dec = make_decoder(decoder)
    stats = {"bad_shards": 0, "bad_samples": 0}
    clips = [c for s in shards for c in iter_tar_clips(s, stats)]
    rng = np.random.default_rng(0)  # the same windows of the same clips for every decoder
    dec.decode(clips[0].data, list(range(16)))  # warm up (library load)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while n < windows:
        clip = clips[n % len(clips)]
        s = int(rng.integers(0, 160 - 16 + 1))
        dec.decode(clip.data, list(range(s, s + 16)))
        n += 1
    return _rates(n, time.perf_counter() - t0, time.process_time() - c0)


def available_decoders() -> list[str]:
    """The backends that import here (torchcodec is optional)."""
    names = []
    for name, cls in DECODERS.items():
        try:
            cls()
        except ImportError as e:
            print(f"[loader] {name} not measured: {e}", flush=True)
        else:
            names.append(name)
    return names


def bench_dataloader(shards: list[str], decoder: str, workers: int, windows: int) -> dict:
    loader = WindowLoader(shards, 8, 16, num_workers=workers, decoder=decoder, windows_per_clip=8, clips_per_group=8,
                          shuffle_buffer=16, seed=0)
    it = iter(loader)
    for _ in range(workers):
        next(it)
    n, t0 = 0, time.perf_counter()
    while n < windows:
        n += next(it)["video"].shape[0]
    dt = time.perf_counter() - t0
    return {"workers": workers, "windows_per_s": n / dt, "windows_per_s_per_worker": n / dt / workers}


def bench_training(model: str, batch: int, steps: int, threads: int, tmp: Path, precision: str = "fp32") -> dict:
    torch.set_num_threads(threads)
    cfg = TrainConfig(model=model, frames=16, batch_size=batch, tokenizer_steps=10_000, dynamics_steps=10_000,
                      warmup_steps=1, threads=threads, precision=precision, seed=0)
    mcfg = build_model_config(cfg)
    out = tmp / f"{model}-{precision}"
    n_tok = tokens_per_frame(mcfg)
    gen = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (batch, cfg.frames, 3, mcfg.image_height, mcfg.image_width), dtype=torch.uint8,
                          generator=gen)
    result = {"model": model, "precision": precision, "batch": batch, "frames": cfg.frames,
              "image": [mcfg.image_height, mcfg.image_width], "tokens_per_frame": n_tok, "threads": threads}
    tok = PhaseTrainer("tokenizer", cfg, mcfg, out, dist_lib.DistInfo())
    result["tokenizer"] = _time_steps(tok, video, steps, batch * cfg.frames * n_tok)
    result["tokenizer"]["params"] = sum(p.numel() for p in tok.model.parameters())
    tok.save_checkpoint(None)
    del tok
    dyn = PhaseTrainer("dynamics", cfg, mcfg, out, dist_lib.DistInfo())
    result["dynamics"] = _time_steps(dyn, video, steps, batch * cfg.frames * n_tok)
    result["dynamics"]["params_lam"] = sum(p.numel() for p in dyn.model.lam.parameters())
    result["dynamics"]["params_dynamics"] = sum(p.numel() for p in dyn.model.dynamics.parameters())
    return result


def _time_steps(trainer: PhaseTrainer, video: torch.Tensor, steps: int, tokens_per_step: int) -> dict:
    trainer.step_on(video)  # warm-up step (allocations)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.step_on(video)
        times.append(time.perf_counter() - t0)
    sec = sorted(times)[len(times) // 2]
    return {"sec_per_step_median": sec, "sec_per_step": times, "tokens_per_s": tokens_per_step / sec,
            "windows_per_s": video.shape[0] / sec}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", nargs="*", default=None,
                    help="also measure the loader on these ingest output dirs / shard globs (synthetic shards always)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.json"))
    ap.add_argument("--windows", type=int, default=480)
    ap.add_argument("--quick", action="store_true", help="tiny config only, fewer windows")
    ap.add_argument("--skip-training", action="store_true", help="loader only")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the training steps (1: robust on a shared machine)")
    args = ap.parse_args(argv)
    windows = 160 if args.quick else args.windows
    results: dict = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "loadavg_start": os.getloadavg()},
    }
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        write_sprite_output(tmp / "ingest", n_train_shards=4, clips_per_shard=8, n_val_shards=0, seed=0)
        sets = {"synthetic": resolve_inputs([str(tmp / "ingest")]).shards}
        spec = ClipsConfig().spec
        results["data"] = {"synthetic": f"4 shards x 8 clips, {spec.frames} frames {spec.width}x{spec.height} h264 "
                                         f"g={spec.keyframe_interval} (tests/fixtures)"}
        if args.shards:
            sets["given"] = resolve_inputs(args.shards).shards
            results["data"]["given"] = sets["given"]
        results["loader"] = {}
        decoders = available_decoders()
        for name, shards in sets.items():
            loader: dict = {}
            for dec in decoders:
                r = {"clip_once": bench_loader(shards, dec, windows),
                     "clip_once_4_windows": bench_loader(shards, dec, windows // 2, windows_per_clip=4),
                     "open_per_window": bench_open_per_window(shards, dec, max(64, windows // 4))}
                loader[dec] = r
                print(f"[loader {name}] {dec}: CPU ms per window {r['clip_once']['cpu_ms_per_window']:.2f} "
                      f"(8 per clip), {r['clip_once_4_windows']['cpu_ms_per_window']:.2f} (4 per clip), "
                      f"{r['open_per_window']['cpu_ms_per_window']:.2f} opening per window", flush=True)
            # the loader's own mode decides: clips opened once, windows_per_clip (8) windows each
            best = min(decoders, key=lambda d: loader[d]["clip_once"]["cpu_ms_per_window"])
            loader["fastest"] = best
            loader["dataloader_2_workers"] = bench_dataloader(shards, best, 2, windows)
            print(f"[loader {name}] DataLoader 2 workers ({best}): "
                  f"{loader['dataloader_2_workers']['windows_per_s']:.0f} windows/s", flush=True)
            results["loader"][name] = loader
        if args.skip_training:
            results["machine"]["loadavg_end"] = os.getloadavg()
            Path(args.out).write_text(json.dumps(results, indent=2))
            print(args.out)
            return 0

        training = []
        plans = [("tiny", 4, 5)] + ([] if args.quick else [("small", 1, 2)])
        for model, batch, steps in plans:
            r = bench_training(model, batch, steps, args.threads, tmp)
            training.append(r)
            print(f"[train] {model} batch {batch}x16x{r['image'][0]}x{r['image'][1]}: tokenizer "
                  f"{r['tokenizer']['tokens_per_s']:.0f} tok/s ({r['tokenizer']['sec_per_step_median']:.2f} s/step), "
                  f"LAM+dynamics {r['dynamics']['tokens_per_s']:.0f} tok/s "
                  f"({r['dynamics']['sec_per_step_median']:.2f} s/step)", flush=True)
        results["training_cpu"] = training
    results["machine"]["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
