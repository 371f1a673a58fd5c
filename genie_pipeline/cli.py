"""`genie-pipeline` command line. Exit status: 0 ok, 1 a check failed, 2 bad config or usage."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from genie_pipeline.config import ConfigError, load_config

# Beam warns at import that GCP client libraries are missing; they are only needed on Dataflow
# (`pip install -e '.[dataflow]'`), where the warning does not appear
logging.getLogger().addFilter(lambda r: "apitools not found" not in r.getMessage())
# timm and huggingface_hub retry network calls for ~46 s when offline; nothing here needs a hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _config(args) -> "object":
    return load_config(args.config, output_dir=getattr(args, "output", None))


# ------------------------------------------------------------------------------ commands
def cmd_ingest(args, beam_args) -> int:
    from genie_pipeline.ingest.pipeline import run_ingest, summary_table

    cfg = _config(args)
    stats = run_ingest(cfg, beam_args, retry_failed=args.retry_failed)
    print(summary_table(stats))
    out = os.path.abspath(cfg.output.dir)
    print(f"\noutputs in {out}: shards/, manifest.parquet, videos.parquet, failures.parquet, "
          f"candidates.parquet, stats.json")
    return 0


def cmd_verify(args, _) -> int:
    from genie_pipeline.shards.verify import verify

    spec = load_config(args.config).clips.spec if args.config else None
    problems = verify(args.out, spec=spec, decode=not args.no_decode)
    for p in problems:
        print(f"PROBLEM {p}")
    print(f"verify {args.out}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def cmd_sample_corpus(args, _) -> int:
    from genie_pipeline.corpus.generate import generate_corpus

    path = generate_corpus(args.out, seed=args.seed, size=args.size)
    print(f"sample corpus catalog: {path}")
    return 0


def cmd_serve_corpus(args, _) -> int:
    from genie_pipeline.corpus.serve import serve_forever

    serve_forever(args.dir, host=args.host, port=args.port)
    return 0


def cmd_train(args, _) -> int:
    from genie_pipeline.training.cli import run_train

    return run_train(args, _config(args))


def cmd_run(args, beam_args) -> int:
    """Ingest, then train on what was ingested: the downstream job starts once data is ready."""
    rc = cmd_ingest(args, beam_args)
    if rc:
        return rc
    from genie_pipeline.training.cli import run_train

    cfg = _config(args)
    if not getattr(args, "inputs", None):
        args.inputs = [cfg.output.dir]
    return run_train(args, cfg)


def cmd_label(args, _) -> int:
    from genie_pipeline.filtering.label import run_label

    return run_label(args)


def cmd_train_quality(args, _) -> int:
    from genie_pipeline.filtering.quality_train import run_train_quality

    return run_train_quality(args, _config(args) if args.config else None)


def cmd_refilter(args, _) -> int:
    from genie_pipeline.filtering.quality import run_refilter

    return run_refilter(args, _config(args) if args.config else None)


# -------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genie-pipeline", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    def with_config(p, required=True):
        p.add_argument("--config", "-c", required=required, help="pipeline.yaml")
        return p

    p = with_config(sub.add_parser("ingest", help="find, download, cut, filter and shard videos "
                                                  "(extra --flags go to Beam, e.g. --runner DataflowRunner)"))
    p.add_argument("--output", "-o", help="overrides output.dir")
    p.add_argument("--retry-failed", action="store_true", help="retry videos that failed in earlier runs")
    p.set_defaults(func=cmd_ingest, beam_passthrough=True)

    p = sub.add_parser("verify", help="check shards and manifest of an ingest output; exit 1 on any problem")
    p.add_argument("out")
    p.add_argument("--config", "-c", help="clip spec to check against (default 160 frames 160x90 10 FPS)")
    p.add_argument("--no-decode", action="store_true", help="skip decoding every clip")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("sample-corpus", help="render the embedded sample corpus from simulators")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=["small", "full", "quality"], default="full",
                   help="quality: 30 games, one clean and one degraded video each (for measuring the classifier)")
    p.set_defaults(func=cmd_sample_corpus)

    p = sub.add_parser("serve-corpus", help="serve a sample corpus over HTTP with a search endpoint")
    p.add_argument("dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.set_defaults(func=cmd_serve_corpus)

    _optional(sub, "genie_pipeline.training.cli", "add_train_args", "train", "train the Genie model from shards", cmd_train, with_config)
    p = _optional(sub, "genie_pipeline.training.cli", "add_train_args", "run", "ingest, then train", cmd_run, with_config)
    if p is not None:
        p.add_argument("--output", "-o", help="overrides output.dir")
        p.add_argument("--retry-failed", action="store_true")
        p.set_defaults(beam_passthrough=True)
    _optional(sub, "genie_pipeline.filtering.label", "add_label_args", "label", "web page for labelling clips", cmd_label, None)
    _optional(sub, "genie_pipeline.filtering.quality_train", "add_train_quality_args", "train-quality",
              "train the ResNet18 quality classifier from labels", cmd_train_quality,
              lambda p: with_config(p, required=False))
    _optional(sub, "genie_pipeline.filtering.quality", "add_refilter_args", "refilter",
              "re-apply a quality threshold and rewrite shards", cmd_refilter, lambda p: with_config(p, required=False))
    return ap


def _optional(sub, module: str, adder: str, name: str, help_: str, func, with_config):
    """Commands whose arguments live beside their implementation."""
    import importlib

    try:
        add = getattr(importlib.import_module(module), adder)
    except (ImportError, AttributeError):
        return None
    p = sub.add_parser(name, help=help_)
    if with_config:
        with_config(p)
    add(p)
    p.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args, rest = ap.parse_known_args(argv)
    if rest and not getattr(args, "beam_passthrough", False):
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.verbose:
        os.environ["GENIE_VERBOSE"] = "1"  # worker processes inherit it
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args, rest)
    except ConfigError as e:
        print(f"genie-pipeline: config error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        # bad labels or model files: a clear message, not a traceback
        if type(e).__name__ == "OutputBusy":  # not the user's config: another run holds the output
            print(f"genie-pipeline: {e}", file=sys.stderr)
            return 1
        if type(e).__name__ == "QualityError":
            print(f"genie-pipeline: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
