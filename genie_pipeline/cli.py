"""`genie-pipeline`: every subcommand. Argument parsing lives here and nowhere else.

Every command reads `pipeline.yaml` (`-c`, optional except for ingest and run) and takes
`--set section.key=VALUE` overrides (VALUE is YAML). Exit status: 0 ok, 1 a check or a run
failed (or another run holds the output), 2 a bad config, flag or input, a path that is not
there (the message names it), 130 interrupted (README: the exit-status table).

    torchrun --nproc_per_node 2 -m genie_pipeline.cli train -c pipeline.yaml out/ingest
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
from pathlib import Path

# Run as the program (`genie-pipeline`, `python -m genie_pipeline.cli`, torchrun -m): SIGINT is
# blocked in the main thread before any library starts a thread (numpy's BLAS, pyarrow and
# grpc start native ones at import), so that every thread of the process blocks it and the
# sigwait thread of `interrupts` is the only one that can take it
PROGRAM = __name__ == "__main__" or os.path.basename(sys.argv[0]) == "genie-pipeline"
if PROGRAM:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

from genie_pipeline.config import ConfigError, PipelineConfig, check_train, load_config  # noqa: E402



def _no_gcp_warning(record: logging.LogRecord) -> bool:
    # Beam warns at import that GCP client libraries are missing; they are only needed on
    # Dataflow (`pip install -e '.[dataflow]'`), where the warning does not appear
    return "apitools not found" not in record.getMessage()


def quiet_start() -> None:
    """What every entry point sets before Beam or torch load (idempotent)."""
    root = logging.getLogger()
    if _no_gcp_warning not in root.filters:
        root.addFilter(_no_gcp_warning)
    # timm and huggingface_hub retry network calls for ~46 s when offline; nothing here needs a hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _config(args, require_sources: bool = False, beam_args: list[str] | None = None, check=None) -> PipelineConfig:
    """The config (and `check(cfg)`'s cross-checks), with its Beam options (runner.options, then
    `beam_args`: e.g. --s3_endpoint_url) set for this process's filesystems, so every command
    reads and writes gs:// and s3:// as the ingest's workers do."""
    cfg = load_config(getattr(args, "config", None), sets=getattr(args, "set", None) or [],
                      output_dir=getattr(args, "output", None), require_sources=require_sources)
    if check is not None:
        check(cfg)
    # imported once the config is valid: Beam takes 1.5 s to import, a bad config exits before
    from genie_pipeline.shards.objstore import configure

    configure(list(cfg.runner.options) + list(beam_args or []))
    return cfg


# ------------------------------------------------------------------ ingest and checks
def cmd_ingest(args, beam_args) -> int:
    cfg = _config(args, require_sources=True, beam_args=beam_args)
    hook = args.on_commit or cfg.output.on_commit
    if hook is not None:
        _check_command("--on-commit", hook)
    from genie_pipeline.ingest.pipeline import run_ingest, summary_table
    from genie_pipeline.shards import snapshots

    # read only for a hook: before the run's preflight, a remote output may not be reachable yet
    # (a Dataflow run refused for a missing option would first wait out the store's retries)
    before = snapshots.latest_id(cfg.output.dir) if hook else None
    stats = run_ingest(cfg, beam_args, retry_failed=args.retry_failed, detach=args.detach)
    if stats.get("submitted"):
        if hook:
            print("ingest: --on-commit runs where the commit is seen: a detached job commits without this "
                  f"launcher, so run `genie-pipeline watch {cfg.output.dir} --then CMD` for it", file=sys.stderr)
        return 0
    if hook:
        _on_commit(hook, cfg.output.dir, before)
    print(summary_table(stats))
    out = cfg.output.dir if "://" in cfg.output.dir else os.path.abspath(cfg.output.dir)
    print(f"\noutputs in {out}: shards/, the tables manifest/, videos/, failures/, candidates/ (Parquet part "
          f"files), stats.json")
    return 0


def _check_command(flag: str, cmd: str) -> None:
    import shlex

    try:
        if shlex.split(cmd):
            return
    except ValueError as e:
        raise ConfigError(flag, f"not a command line ({e})") from None
    raise ConfigError(flag, "an empty command")


def _on_commit(hook: str, out: str, before: str | None) -> None:
    """Run the on-commit hook after a committed ingest; its failure is reported, the commit stays."""
    from genie_pipeline.shards import snapshots
    from genie_pipeline.triggers import run_hook

    latest = snapshots.latest_id(out)
    record = snapshots.read(out, latest) if latest else None
    rc = run_hook(hook, out, record, new=latest is not None and latest != before)
    if rc:
        print(f"genie-pipeline: ingest: the on-commit command failed (exit {rc}); the commit stands "
              f"(snapshot {latest})", file=sys.stderr)


def _require_output(out: str) -> None:
    """A local output directory that is not there is bad input (exit 2), named."""
    if "://" not in out and not os.path.isdir(out):
        raise ConfigError("OUT", f"{out}: no such ingest output directory")


def cmd_snapshots(args, _) -> int:
    """List an output's snapshots, or the diff between two."""
    from genie_pipeline.shards import retention, snapshots

    _config(args)
    out = args.out
    _require_output(out)
    if args.latest:
        latest = snapshots.latest_id(out)
        if latest is None:
            raise snapshots.SnapshotError(f"{out} has no snapshots")
        print(latest)
        return 0
    if args.diff:
        old, new = (args.diff + [None])[:2]
        record = snapshots.read(out, new)
        old = old or record.get("parent")
        if old is None:
            raise snapshots.SnapshotError(f"{out}@{record['id']} has no parent: give --diff OLD NEW")
        d = retention.diff(out, old, record["id"])
        if args.json:
            print(json.dumps(d, indent=2))
            return 0
        print(f"{out}: {d['old']} -> {d['new']}: {d['added']['total']} clips added, "
              f"{d['removed']['total']} removed")
        print(f"{'':10} {'':24} {'added':>8} {'removed':>8}")
        for by in ("by_source", "by_split"):
            for name in sorted(set(d["added"][by]) | set(d["removed"][by])):
                print(f"{by[3:]:10} {name or '-':24} {d['added'][by].get(name, 0):>8} {d['removed'][by].get(name, 0):>8}")
        return 0
    records = snapshots.list_all(out)
    latest = snapshots.latest_id(out)
    if args.json:
        print(json.dumps(records, indent=1))
        return 0
    if not records:
        print(f"{out}: no snapshots")
        return 0
    print(f"{'id':24} {'time (UTC)':21} {'kind':10} {'parent':24} {'kept':>7} {'train':>7} {'val':>6} "
          f"{'shards':>6} {'MB':>9}")
    for r in records:
        shards = [e for es in r.get("splits", {}).values() for e in es]
        c = r.get("counts") or {}
        mark = " *" if r["id"] == latest else ""
        print(f"{r['id']:24} {r.get('time', ''):21} {r.get('kind') or '':10} {r.get('parent') or '-':24} "
              f"{c.get('clips_kept') or 0:>7} {c.get('clips_train') or 0:>7} {c.get('clips_val') or 0:>6} "
              f"{len(shards):>6} {sum(e['bytes'] for e in shards) / 2**20:>9.2f}{mark}")
    return 0


def cmd_gc(args, _) -> int:
    from genie_pipeline.shards import retention

    _config(args)
    _require_output(args.out)
    if args.keep is not None and args.keep < 1:
        raise ConfigError("--keep", f"must be at least 1, got {args.keep}")
    if args.older_than is not None and not args.older_than >= 0:
        raise ConfigError("--older-than", f"must be a number of days >= 0, got {args.older_than}")
    r = retention.gc(args.out, keep=args.keep, older_than_days=args.older_than, dry_run=args.dry_run)
    verb = "would free" if r["dry_run"] else "freed"
    print(f"gc {args.out}: {len(r['kept'])} of {r['snapshots']} snapshots kept, {len(r['dropped'])} dropped; "
          f"{verb} {r['files']} files, {r['bytes']} bytes ({r['bytes'] / 2**20:.2f} MB)")
    if args.verbose or r["dry_run"]:
        print("\n".join(r["paths"]))
    return 0


def cmd_watch(args, _) -> int:
    from genie_pipeline.shards import snapshots
    from genie_pipeline.triggers import parse_every, watch

    _config(args)
    try:
        every = parse_every(args.every)
    except ValueError as e:
        raise ConfigError("--every", str(e)) from None
    _check_command("--then", args.then)
    if args.max_runs is not None and args.max_runs < 1:
        raise ConfigError("--max-runs", f"must be at least 1, got {args.max_runs}")
    if args.after is None:
        after = snapshots.latest_id(args.out)
    elif args.after == "none":
        after = None
    else:
        after = snapshots.read(args.out, args.after)["id"]
    print(f"watch {args.out}: every {args.every}, after snapshot {after or '(none)'}", file=sys.stderr, flush=True)
    try:
        return watch(args.out, every, args.then, after, args.max_runs)
    except KeyboardInterrupt:
        return 130


def cmd_report(args, _) -> int:
    from genie_pipeline.ingest.pipeline import report_thresholds
    from genie_pipeline.shards.report import write_report

    print(f"wrote {write_report(args.out, report_thresholds(_config(args).filters))}")
    return 0


def cmd_verify(args, _) -> int:
    from genie_pipeline.shards.verify import verify

    _require_output(args.out)
    # the output records its own clip spec; the config's serves outputs that predate it
    problems = verify(args.out, spec=_config(args).clips.spec, decode=args.deep and not args.no_decode)
    for p in problems:
        print(f"PROBLEM {p}")
    print(f"verify {args.out}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


# ------------------------------------------------------------------------ sample corpus
def cmd_sample_corpus(args, _) -> int:
    from genie_pipeline.corpus.generate import generate_corpus

    path = generate_corpus(args.out, seed=args.seed, size=args.size)
    print(f"sample corpus catalog: {path}")
    return 0


def cmd_serve_corpus(args, _) -> int:
    from genie_pipeline.corpus.serve import serve_forever

    try:
        serve_forever(args.dir, host=args.host, port=args.port, token=args.token)
    except ValueError as e:
        print(f"genie-pipeline serve-corpus: {e}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------------ quality loop
def _labels_db(cfg: PipelineConfig, input_dir: str) -> str:
    q = cfg.filters.quality
    if q.labels_db:
        return q.labels_db
    if "://" in input_dir:  # SQLite cannot live in a bucket: a local file named after the input
        return os.path.abspath("".join(c if c.isalnum() or c in "-_." else "_" for c in input_dir.split("://", 1)[1])
                               .strip("_") + ".labels.sqlite")
    p = Path(input_dir)
    return str(p / "labels.sqlite" if p.is_dir() else p.with_suffix(".labels.sqlite"))


def cmd_label(args, _) -> int:
    from genie_pipeline.filtering.quality import (default_labeller, export_labels, import_labels,
                                                  open_label_store, serve_labels)
    from genie_pipeline.filtering.quality.label.labelstudio import parse_annotators
    from genie_pipeline.shards.reader import ClipIndex

    cfg = _config(args)
    index = ClipIndex.open(args.input)
    store = open_label_store(_labels_db(cfg, args.input))
    try:
        if args.export:
            n = export_labels(store, args.export, base_url=args.base_url,
                              annotators=parse_annotators(args.annotator))
            print(f"exported {n} labels to {args.export}")
        elif args.import_:
            n = import_labels(store, index, args.import_)
            print(f"imported {n} changed label(s) from {args.import_} into {store.path} (labels already "
                  "there, the same, are not counted)")
        else:
            serve_labels(index, store, host=args.host, port=args.port, token=args.token, target=args.target,
                         seed=args.seed, resample=args.resample or args.active,
                         labeller=args.labeller if args.labeller is not None else default_labeller(),
                         active=_active(cfg.filters.quality, index, store) if args.active else None)
        return 0
    finally:
        store.close()


def _active(q, index, store) -> dict:
    """label --active: the margins of the clips nobody has labelled yet under filters.quality.model."""
    from genie_pipeline.filtering.quality import load_labels, resolve_labels
    from genie_pipeline.filtering.quality.score import uncertainty

    if not q.model:
        raise ConfigError("filters.quality.model", "--active needs a model to ask (train-quality first)")
    done = set(resolve_labels(load_labels(str(store.path))))
    keys = [k for k in index.clips if k not in done]
    return {"margin": uncertainty(index, q.model, keys), "share": q.active_share, "model": q.model}


def cmd_train_quality(args, _) -> int:
    from genie_pipeline.filtering.quality import load_labels, resolve_labels, train_quality
    from genie_pipeline.filtering.quality.model import metadata_path
    from genie_pipeline.shards.reader import ClipIndex

    cfg = _config(args)
    q = cfg.filters.quality
    input_dir = args.input or cfg.output.dir
    index = ClipIndex.open(input_dir)
    if args.reference_catalog:
        from genie_pipeline.corpus.reference import reference_labels

        events, source = reference_labels(input_dir, args.reference_catalog), f"reference labels from {args.reference_catalog}"
    else:
        source = _labels_db(cfg, input_dir)
        events = load_labels(source)
    out = args.out or q.model or default_quality_model(input_dir)
    labels = resolve_labels(events)
    small = small_label_set(labels)
    if small:
        print(f"genie-pipeline train-quality: warning: {small}", file=sys.stderr)
    meta = train_quality(index, labels, out, q, label_source=source,
                         progress=not args.no_progress, ignore_missing=args.ignore_missing)
    print(f"wrote {out} (+ {os.path.basename(metadata_path(out))}, {', '.join(meta['pictures'].values())})")
    print(_quality_summary(meta))
    if not args.out and not q.model:
        print(f"next: `genie-pipeline refilter {input_dir} --rescore` scores every clip with it and re-applies "
              "its threshold")
    return 0


def cmd_pretrain_quality(args, _) -> int:
    from genie_pipeline.filtering.quality.pretrain import pretrain_backbone
    from genie_pipeline.shards.reader import ClipIndex

    cfg = _config(args)
    q = cfg.filters.quality
    input_dir = args.input or cfg.output.dir
    q = q.model_copy(update={"pretrain_steps": q.pretrain_steps or 300})
    m = pretrain_backbone(ClipIndex.open(input_dir), args.out, q, progress=not args.no_progress)
    print(f"wrote {args.out}: {m['steps']} steps on {m['clips']} clips, loss {m['loss_first']:.3f} -> "
          f"{m['loss_last']:.3f} (chance {m['chance_loss']:.3f}) in {m['seconds']:.0f} s; "
          f"use it with --set filters.quality.weights={args.out}")
    return 0


MIN_QUALITY_LABELS, MIN_QUALITY_PER_CLASS = 200, 50  # below: validation and test are a handful of clips


def small_label_set(labels: dict[str, str]) -> str | None:
    """The warning for a label set too small to train and measure a classifier, else None."""
    good = sum(v == "good" for v in labels.values())
    bad = len(labels) - good
    if len(labels) >= MIN_QUALITY_LABELS and min(good, bad) >= MIN_QUALITY_PER_CLASS:
        return None
    return (f"{len(labels)} labelled clips ({good} good, {bad} bad): below {MIN_QUALITY_LABELS} clips and "
            f"{MIN_QUALITY_PER_CLASS} of each label, the validation and test splits hold a handful of clips, so its "
            "threshold and ROC-AUC are noise; label more (`genie-pipeline label`)")


def default_quality_model(input_dir: str) -> str:
    """Where train-quality writes its model when neither --out nor filters.quality.model says."""
    from genie_pipeline.shards import fs

    return fs.join(input_dir, "quality", "model.pt")


def _quality_summary(meta: dict) -> str:
    which = "test" if "test" in meta["metrics"] else "val"
    m = meta["metrics"][which]

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    return (f"threshold {meta['threshold']:.4f} (target precision {meta['target_precision']}"
            f"{'' if meta['target_met'] else ', NOT reached on validation'}); {which}: ROC-AUC {f(m['roc_auc'])}, "
            f"precision {f(m['precision'])}, recall {f(m['recall'])} on {m['n']} clips; "
            f"trained in {meta['training']['seconds']:.0f} s")


def cmd_refilter(args, _) -> int:
    from genie_pipeline.filtering.quality import read_metadata, refilter, score_manifest

    from genie_pipeline.shards import fs

    from genie_pipeline.shards.reader import has_table

    cfg = _config(args)
    q = cfg.filters.quality
    out = args.out or cfg.output.dir
    if not has_table(out, "manifest"):
        raise ConfigError("OUT", f"{out}: not an ingest output (no manifest table)")
    if not q.model and fs.exists(default_quality_model(out)):  # the one train-quality wrote for this output
        q = q.model_copy(update={"model": default_quality_model(out)})
        print(f"refilter: model {q.model} (train-quality's default place; filters.quality.model names another)",
              file=sys.stderr)
    threshold = q.threshold
    if threshold is None and q.model:
        threshold = float(read_metadata(q.model)["threshold"])
    if threshold is None:
        raise ConfigError("filters.quality.threshold", "set it (--set filters.quality.threshold=X) or "
                                                       "filters.quality.model, whose stored threshold is used")
    if args.rescore and not q.model:
        raise ConfigError("filters.quality.model", "--rescore needs a model (--set filters.quality.model=PATH)")
    rows = score_manifest(out, q) if args.rescore else None
    from genie_pipeline.shards.snapshots import command_line, config_hash

    r = refilter(out, threshold, cfg.shards, cfg.clips.spec, rows=rows,
                 snapshot_meta={"command": command_line(sys.argv), "config_sha256": config_hash(cfg)})
    from genie_pipeline.ingest.pipeline import card_details
    from genie_pipeline.shards.card import write_card

    write_card(out, card_details(cfg))  # the counts changed
    print(f"refilter {out}: threshold {threshold:.4f}: {r['kept_before']} -> {r['kept_after']} clips kept "
          f"of {r['clips']} ({r['rejected']} newly rejected, {r['kept']} restored)")
    if not args.rescore and q.model:
        print(f"the manifest's scores were used; --rescore scores every clip with {q.model} first")
    return 0


# ---------------------------------------------------------------------------- training
def _train(cfg: PipelineConfig, args) -> int:
    """Train on `cfg` (its train section already passed `check_train`, in `_config`)."""
    from genie_pipeline.shards.reader import DataError, resolve_inputs
    from genie_pipeline.training.run import train_main

    inputs = list(getattr(args, "inputs", None) or cfg.train.data or [cfg.output.dir])
    try:
        resolve_inputs(inputs, cfg.train.split)  # a path given that is not there: bad input, exit 2
    except DataError as e:
        print(f"genie-pipeline: training data: {e}", file=sys.stderr)
        return 2
    try:
        summary = train_main(cfg.train, stage=args.stage, inputs=inputs, resume=args.resume,
                             out_dir=getattr(args, "out", None))
    except DataError as e:  # shards went missing or corrupt past the threshold: the run failed
        print(f"genie-pipeline: training data: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(train_summary(summary))
    return 0


def train_summary(summary: dict) -> str:
    """A few lines for the terminal; the whole summary is in run.json ("summary")."""
    lines = []
    for phase, p in summary.get("phases", {}).items():
        if p.get("skipped"):
            lines.append(f"{phase}: finished earlier ({p['steps']} steps), left as it was")
            continue
        loss = p.get("final_metrics", {}).get("loss")
        rate = p.get("sec_per_step")
        lines.append(f"{phase}: {p['steps']} steps" + (f" (resumed from {p['resumed_from']})" if p.get("resumed_from")
                                                      is not None else "")
                     + f" in {p.get('seconds', 0):.0f} s"
                     + (f", {rate:.2f} s/step" if isinstance(rate, float) and rate == rate else "")
                     + (f", loss {p.get('first_loss'):.4f} -> {loss:.4f}" if loss is not None and p.get("first_loss")
                        is not None else "")
                     + f"; checkpoint {p.get('checkpoint')}")
    if summary.get("genie_checkpoint"):
        lines.append(f"model for play and eval: {summary['genie_checkpoint']}")
    lines.append(f"full summary (JSON): {summary.get('run_json')} (\"summary\")")
    return "\n".join(lines)


def cmd_train(args, _) -> int:
    return _train(_config(args, check=check_train), args)


def cmd_run(args, beam_args) -> int:
    """Ingest, then train on what was ingested."""
    if args.detach:
        print("genie-pipeline run: --detach: run trains on what its ingest commits, so it waits for the job; "
              "use `genie-pipeline ingest --detach` and `genie-pipeline watch OUT --then CMD` to start training "
              "on the snapshot the job commits", file=sys.stderr)
        return 2
    cfg = _config(args, require_sources=True, check=check_train)  # before hours of ingest, not after
    rc = cmd_ingest(args, beam_args)
    return rc or _train(cfg, args)


def cmd_play(args, _) -> int:
    """Check checkpoint, actions and prompt, in that order, before anything is written."""
    if args.serve:
        return _play_serve(args)
    from genie_pipeline.prompt import load_prompt
    from genie_pipeline.training.bundle import load_genie
    from genie_pipeline.training.errors import TrainingError
    from genie_pipeline.training.play import parse_actions, play

    cfg = _config(args)
    if args.prompt is None:
        raise TrainingError("play", "--prompt IMAGE is required")
    _check_sampler_flags(args)
    if args.fps < 1:
        raise TrainingError("play", f"--fps must be >= 1, got {args.fps}")
    genie = load_genie(args.checkpoint, args.device)
    actions = parse_actions(args.actions if args.random is None else f"random:{args.random}",
                            genie.cfg.lam.num_actions, args.seed)
    prompt_HWC = load_prompt(args.prompt, cfg.clips, cfg.download.max_pixels)
    out = play(genie, prompt_HWC, actions, args.out, args.steps, args.temperature, args.greedy, args.seed,
               args.fps, device=args.device, prompt_detail=args.prompt_detail, keep_bias=args.keep_bias)
    print(f"{out.with_suffix('.mp4')}\n{out.with_suffix('.gif')}")
    return 0


def _check_sampler_flags(args) -> None:
    from genie_pipeline.models.config import KEEP_BIAS_MAX
    from genie_pipeline.training.errors import TrainingError

    if args.steps is not None and args.steps < 1:
        raise TrainingError("play", f"--steps must be >= 1, got {args.steps}")
    for flag, value, top in (("--temperature", args.temperature, math.inf), ("--keep-bias", args.keep_bias, KEEP_BIAS_MAX)):
        if value is not None and not 0 <= value < top:  # NaN fails too
            raise TrainingError("play", f"{flag} must be a number in [0, {top:g}), got {value}")


def _play_serve(args) -> int:
    """`play --serve`: the play page until Ctrl-C (a non-loopback --host without --token: exit 2)."""
    from genie_pipeline.training.errors import TrainingError
    from genie_pipeline.training.serve import serve_play

    _check_sampler_flags(args)
    if not 0 <= args.port <= 65535:
        raise TrainingError("play", f"--port must be in [0, 65535], got {args.port}")
    serve_play(args.checkpoint, host=args.host, port=args.port, token=args.token, data=args.data,
               steps=args.steps, temperature=args.temperature, greedy=args.greedy, seed=args.seed,
               device=args.device, max_pixels=_config(args).download.max_pixels, prompt_detail=args.prompt_detail,
               keep_bias=args.keep_bias)
    return 0


def cmd_export(args, _) -> int:
    from genie_pipeline.training.bundle import export_bundle

    print(export_bundle(args.checkpoint, args.out))
    return 0


MIN_EVAL_CLIPS = 16  # below: the bootstrap interval is as wide as the effects eval looks for


def cmd_eval(args, _) -> int:
    """A checkpoint or run dir in a bucket is evaluated from a local copy of its checkpoint file
    and run.json (eval reads run folders directly); its report goes to the bucket's RUN/eval
    unless --out says otherwise, and a bucket --out is uploaded the same way."""
    import tempfile

    from genie_pipeline.shards import fs
    from genie_pipeline.training.bundle import resolve, run_dir_of
    from genie_pipeline.training.bundle import local_run_copy
    from genie_pipeline.training.eval import run_eval

    if not fs.exists(args.checkpoint) and not fs.isdir(args.checkpoint):
        from genie_pipeline.training.errors import TrainingError

        raise TrainingError("checkpoint", f"{args.checkpoint} does not exist")
    remote_out = args.out if args.out and fs.is_remote(args.out) else None
    if remote_out is None and args.out is None and fs.is_remote(args.checkpoint):
        remote_out = fs.join(str(run_dir_of(resolve(args.checkpoint))), "eval")
    if remote_out:
        fs.check_writable(remote_out)  # before minutes of rollouts
    with local_run_copy(args.checkpoint) as checkpoint, tempfile.TemporaryDirectory(prefix="genie-eval-") as tmp:
        report = run_eval(checkpoint, data=args.data, out_dir=tmp if remote_out else args.out, i3d=args.i3d,
                          clips=args.clips, seed=args.seed, device=args.device,
                          sampler=None if args.keep_bias is None else {"keep_bias": args.keep_bias})
        out = report["out_dir"]
        if remote_out:
            for folder, _, names in os.walk(tmp):  # every file the report wrote, listed or not
                for name in names:
                    path = os.path.join(folder, name)
                    if name.endswith((".json", ".html")):
                        # the report names the checkpoint and folder it was given: the bucket's, not
                        # the local copies
                        with open(path, encoding="utf-8") as f:
                            text = f.read().replace(checkpoint, args.checkpoint).replace(tmp, remote_out)
                        with open(path, "w", encoding="utf-8") as f:
                            f.write(text)
                    rel = os.path.relpath(path, tmp)
                    fs.copy(path, fs.join(remote_out, *rel.split(os.sep)))
            out = remote_out
    d = report["delta_psnr"]
    print(f"ΔtPSNR@{d['t']} {d['value']:.2f} dB (95 % interval {d['ci95'][0]:.2f} to {d['ci95'][1]:.2f}) "
          f"against another clip's actions, sampler {report['default_sampler']}, on {report['clips']} clips")
    if report["clips"] < MIN_EVAL_CLIPS:
        print(f"genie-pipeline eval: warning: {report['clips']} clips, below {MIN_EVAL_CLIPS}: these numbers "
              "are anecdotes, not measurements (the validation split is small; ingest more videos or raise "
              "shards.val_fraction)", file=sys.stderr)
    print("\n".join((fs.join(out, name) if remote_out else str(Path(out) / name)) for name in report["files"].values()))
    return 0


def cmd_plan(args, _) -> int:
    from genie_pipeline.plan import (PAPER_CLIP_HOURS, RESULTS, Download, format_plan, make_plan,
                                     parse_source_format, read_rates, source_format)

    cfg = _config(args)
    if args.gpu and args.gpu_clips_per_s is None:
        print("genie-pipeline: plan: no GPU scoring rate was measured here; GPU-hours stay unknown "
              "until you give --gpu-clips-per-s", file=sys.stderr)
    if args.mean_video_minutes is not None and not args.mean_video_minutes > 0:
        raise ConfigError("plan.mean_video_minutes", f"must be a positive number, got {args.mean_video_minutes!r}")
    fmt = parse_source_format(args.source_format) if args.source_format else source_format(cfg.download.selected_format(cfg.clips.height))
    download = Download(per_host_rate=cfg.download.per_host_rate, hosts=args.hosts,
                        mean_video_s=args.mean_video_minutes * 60, mbps_per_worker=args.mbps_per_worker,
                        source_kbps=args.source_kbps)
    clip_hours = args.clip_hours if args.clip_hours is not None or args.source_hours is not None else PAPER_CLIP_HOURS
    rates = read_rates(args.results or RESULTS)
    plan = make_plan(rates, clip_hours=clip_hours, source_hours=args.source_hours, clip_seconds=cfg.clips.seconds,
                     fmt=fmt, download=download, keep_clip_store=cfg.shards.keep_clip_store, workers=args.workers,
                     wall_hours=args.wall_hours if args.workers is None else None,
                     vcpus_per_worker=args.vcpus_per_worker, price_per_vcpu_hour=args.price_per_vcpu_hour,
                     gpu=args.gpu, gpu_clips_per_s=args.gpu_clips_per_s, price_per_gpu_hour=args.price_per_gpu_hour)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan, rates, args.price_per_vcpu_hour))
    return 0


# -------------------------------------------------------------------------------- parser
# one default port per server, so the corpus, the label page and the play page run side by side
CORPUS_PORT, PLAY_PORT, LABEL_PORT = 8765, 8766, 8767
def _common(p: argparse.ArgumentParser, config_required: bool = False) -> argparse.ArgumentParser:
    p.add_argument("--config", "-c", required=config_required, help="pipeline.yaml")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (VALUE is YAML), e.g. --set train.batch_size=16; repeatable")
    return p


def _ingest_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", help="the output directory (overrides output.dir)")
    p.add_argument("--retry-failed", action="store_true", help="retry videos that failed in earlier runs")
    p.add_argument("--detach", action="store_true",
                   help="return once the job is submitted (Dataflow, flex templates): the job commits itself")
    p.add_argument("--on-commit", metavar="CMD", default=None,
                   help="run CMD (no shell) after the commit, with GENIE_SNAPSHOT, GENIE_OUTPUT and the counts "
                        "in its environment; a failing CMD is reported and the commit stays "
                        "(overrides output.on_commit)")
    p.set_defaults(beam_passthrough=True)


def _train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", choices=("tokenizer", "dynamics", "all"), default="all",
                   help="tokenizer (phase 1), dynamics (phase 2: LAM + dynamics on the frozen tokenizer) or all")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly from the latest checkpoints in train.out_dir")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="genie-pipeline", description="Curate gameplay and robot video and train a Genie-style world model.",
        epilog="Every command takes -c pipeline.yaml and --set section.key=VALUE. Exit status: 0 ok, 1 a check "
               "or run failed, 2 a bad config, flag, input or missing path, 130 interrupted.")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--version", action="version", version=f"genie-pipeline {version()}")
    sub = ap.add_subparsers(dest="command", required=True)

    def command(name, func, help_, config_required=False):
        p = _common(sub.add_parser(name, help=help_), config_required)
        p.set_defaults(func=func)
        return p

    p = command("ingest", cmd_ingest, "find, download, cut, filter and shard videos "
                "(unknown --flags go to Beam, e.g. --runner DataflowRunner)", config_required=True)
    _ingest_flags(p)

    p = command("report", cmd_report, "write OUT/report.html: hours, reasons, score histograms, duplicates, "
                "failures and contact sheets of an ingest output (thresholds from -c/--set)")
    p.add_argument("out", help="ingest output directory")

    p = command("snapshots", cmd_snapshots, "list an output's snapshots (one per commit; * marks LATEST), "
                "or the clips added and removed between two, per source and split")
    p.add_argument("out", help="ingest output directory, local or gs://, s3://")
    p.add_argument("--diff", nargs="+", metavar="ID", default=None,
                   help="OLD NEW: clips added and removed from OLD to NEW; NEW alone: against its parent")
    p.add_argument("--latest", action="store_true", help="print only the id of LATEST (for scripts and DAGs)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("gc", cmd_gc, "delete shards and table parts that no retained snapshot names (never while a "
                "run holds the output)")
    p.add_argument("out", help="ingest output directory, local or gs://, s3://")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--keep", type=int, default=None, metavar="N", help="keep the newest N snapshots")
    which.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                       help="drop snapshots committed more than DAYS days ago (LATEST always stays)")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted and the bytes it would free")

    p = command("watch", cmd_watch, "poll an output (local or bucket) and run a command once per new snapshot: "
                "for a detached or Dataflow ingest")
    p.add_argument("out", help="ingest output directory, local or gs://, s3://")
    p.add_argument("--every", default="10m", help="poll interval: 30s, 10m, 1h (default 10m)")
    p.add_argument("--then", required=True, metavar="CMD",
                   help="command to run (no shell) with GENIE_SNAPSHOT, GENIE_OUTPUT and the counts in its env")
    p.add_argument("--after", default=None, metavar="ID|none",
                   help="the snapshot already handled (default: LATEST now; 'none': the current one counts as new)")
    p.add_argument("--max-runs", type=int, default=None, metavar="N", help="exit after running the command N times")

    p = command("verify", cmd_verify, "check every shard's sha256 (its snapshot's, else its stats file's), the tars, "
                "their samples' metadata and the manifest of an ingest output; exit 1 on any problem")
    p.add_argument("out")
    p.add_argument("--deep", action="store_true", help="also decode every clip and check it against the clip spec")
    p.add_argument("--no-decode", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for scripts

    p = command("sample-corpus", cmd_sample_corpus, "render the embedded sample corpus from simulators")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=["small", "full", "quality"], default="full",
                   help="quality: 30 games, one clean and one degraded video each (for measuring the classifier)")

    p = command("serve-corpus", cmd_serve_corpus, "serve a sample corpus over HTTP with a search endpoint")
    p.add_argument("dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=CORPUS_PORT, help=f"port (default {CORPUS_PORT}; 0 = any free port)")
    p.add_argument("--token", default=os.environ.get("GENIE_CORPUS_TOKEN"),
                   help="required for a non-loopback --host: every URL then starts with /TOKEN "
                        "(env GENIE_CORPUS_TOKEN)")

    p = command("label", cmd_label, "web page for labelling clips (labels: filters.quality.labels_db, "
                "default INPUT/labels.sqlite)")
    p.add_argument("input", help="ingest output directory, or a folder of mp4 clips")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=LABEL_PORT, help=f"port (default {LABEL_PORT}; 0 = any free port)")
    p.add_argument("--token", default=os.environ.get("GENIE_LABEL_TOKEN"),
                   help="access token, required for a non-loopback --host (env GENIE_LABEL_TOKEN)")
    p.add_argument("--target", type=int, default=1000, help="clips in the labelling sample (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--resample", action="store_true", help="draw a new sample (labels are kept)")
    p.add_argument("--active", action="store_true",
                   help="draw a new sample, filters.quality.active_share of it the unlabelled clips "
                        "filters.quality.model is least sure of (labels are kept)")
    p.add_argument("--labeller", default=None, help="default labeller name shown on the page (default: login name)")
    p.add_argument("--export", metavar="FILE", default=None,
                   help="write the labels to FILE (.parquet, or .json for Label Studio) and exit")
    p.add_argument("--base-url", metavar="URL", default=None,
                   help="with --export .json: clip URLs become URL/clip/KEY.mp4 (where this command serves "
                        "the clips, as Label Studio's browser reaches it, e.g. http://host:8767/); "
                        "without it they stay /clip/KEY.mp4, relative to this server, which Label Studio cannot load")
    p.add_argument("--annotator", metavar="NAME=ID|EMAIL", action="append", default=[],
                   help="with --export .json: the Label Studio user (id or email) of labeller NAME, repeatable; "
                        "labellers named by an email go as that email, others unmapped go without completed_by "
                        "(Label Studio credits the importing user)")
    p.add_argument("--import", dest="import_", metavar="FILE", default=None,
                   help="read labels from a Label Studio JSON export (or our Parquet export) and exit")

    p = command("train-quality", cmd_train_quality, "train the ResNet18 quality classifier from labels "
                "(filters.quality.labels_db → filters.quality.model)")
    p.add_argument("input", nargs="?", default=None,
                   help="ingest output directory or folder of mp4 clips (default: output.dir)")
    p.add_argument("--reference-catalog", default=None, metavar="CATALOG",
                   help="instead of labels: each clip gets its video's quality_label from a sample-corpus catalog")
    p.add_argument("--ignore-missing", action="store_true", help="skip labels of clips that don't exist")
    p.add_argument("--out", default=None, metavar="MODEL.pt",
                   help="model file to write, local or gs://, s3:// (MODEL.json and pictures beside it; "
                        "default filters.quality.model, else INPUT/quality/model.pt)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = command("pretrain-quality", cmd_pretrain_quality, "self-supervised pretraining of the quality classifier's "
                "ResNet18 on unlabelled clips (filters.quality.pretrain_*; default 300 steps) -> a weights file")
    p.add_argument("input", nargs="?", default=None,
                   help="ingest output directory or folder of mp4 clips (default: output.dir)")
    p.add_argument("--out", required=True, metavar="WEIGHTS.pt", help="backbone weights to write (local or gs://, s3://)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = command("refilter", cmd_refilter, "re-apply the quality threshold (filters.quality.threshold, else "
                "the model's) and rewrite shards")
    p.add_argument("out", nargs="?", default=None, help="ingest output directory (default: output.dir)")
    p.add_argument("--rescore", action="store_true", help="score every clip again with filters.quality.model first")

    p = command("train", cmd_train, "train the Genie model from shards (also under torchrun)")
    p.add_argument("inputs", nargs="*", metavar="INPUTS",
                   help="ingest output dirs (pinned to their LATEST snapshot; OUT@ID pins snapshot ID), shard "
                        "dirs, .tar files or globs (local or gs://, s3://); default: train.data, else output.dir")
    _train_flags(p)
    p.add_argument("--out", default=None, metavar="RUN_DIR",
                   help="run directory, local or gs://, s3:// (overrides train.out_dir)")

    p = command("run", cmd_run, "ingest, then train on what was ingested", config_required=True)
    _ingest_flags(p)
    _train_flags(p)

    checkpoint_help = ("a run directory (its genie.pt), a genie.pt, a phase-2 checkpoint or an export bundle; "
                       "local or gs://, s3://")
    p = command("play", cmd_play, "prompt a trained Genie with a picture and step latent actions → MP4 + GIF")
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    p.add_argument("--prompt", "--image", dest="prompt", default=None,
                   help="prompt picture (PNG/JPEG/WebP/...) or a video (its first frame), fitted to the clip "
                        "size by clips.aspect; at most download.max_pixels")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--actions", default="random:16", help="comma-separated action ids, e.g. 1,1,3,0")
    which.add_argument("--random", type=int, default=None, metavar="N", help="N uniformly random actions")
    p.add_argument("--out", default="play.mp4", help="PATH.mp4 (a PATH.gif is written beside it)")
    p.add_argument("--steps", type=int, default=None, help="MaskGIT steps (default: the model config)")
    p.add_argument("--temperature", type=float, default=None,
                   help="token sampling temperature (default: the model config; paper: 2)")
    p.add_argument("--greedy", action="store_true", help="most likely tokens, no noise: deterministic")
    p.add_argument("--keep-bias", type=float, default=None,
                   help="nats added to each patch's token in the frame before: higher keeps more of the picture "
                        "as it was (default: the model config's dynamics.keep_bias)")
    p.add_argument("--decoded-only", dest="prompt_detail", action="store_const", const=False, default=None,
                   help="show the tokenizer decoder's frames alone, without the prompt's detail on the patches "
                        "whose token stayed the prompt's (default: the model config's dynamics.prompt_detail)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--serve", action="store_true",
                   help="play in the browser instead: upload or pick a prompt, press keys 1-8")
    p.add_argument("--host", default="127.0.0.1", help="with --serve: address to bind (others need --token)")
    p.add_argument("--port", type=int, default=PLAY_PORT,
                   help=f"with --serve: port (default {PLAY_PORT}; 0 = any free port)")
    p.add_argument("--token", default=os.environ.get("GENIE_PLAY_TOKEN"),
                   help="with --serve: access token, required for a non-loopback --host (env GENIE_PLAY_TOKEN)")
    p.add_argument("--data", default=None, metavar="OUT_OR_SHARDS",
                   help="with --serve: offer the first frames of these validation clips as prompts")

    p = command("export", cmd_export, "write an inference bundle: tokenizer, LAM, dynamics, config and "
                "action names in one weights-only file (for play and eval)")
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    p.add_argument("--out", required=True, help="bundle file to write, e.g. bundle.pt")

    p = command("eval", cmd_eval, "score a trained Genie on validation clips: tokenizer PSNR/SSIM, rollout PSNR, "
                "ΔtPSNR, FVD, latent action use and atlas, latent vs true actions → eval.json + eval.html")
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    p.add_argument("--data", nargs="+", default=None, metavar="OUT_OR_SHARDS",
                   help="ingest output dirs (OUT@ID: snapshot ID; OUT: its LATEST), shard dirs, .tar files or globs "
                        "whose val shards to use (default: the run's inputs, at the snapshots it trained on)")
    p.add_argument("--i3d", default=None, metavar="PATH",
                   help="Inception I3D weights (Kinetics-400 state dict, e.g. i3d_pretrained_400.pt) for FVD; "
                        "without it FVD is reported as unavailable")
    p.add_argument("--out", default=None, metavar="REPORT_DIR", help="where to write the report (default RUN/eval)")
    p.add_argument("--clips", type=int, default=32, help="validation clips to score (default 32)")
    p.add_argument("--seed", type=int, default=0, help="picks the clips and seeds sampling and bootstrap")
    p.add_argument("--keep-bias", type=float, default=None,
                   help="sample with this dynamics.keep_bias instead of the one stored with the model (the default "
                        "sampler is reported beside the same without it)")
    p.add_argument("--device", default="cpu")

    p = command("plan", cmd_plan, "workers, wall time (CPU and download bounds), vCPU/GPU-hours, bytes downloaded "
                "and stored, and cost of an ingest, from the committed benchmark results and the config "
                "(download.per_host_rate, download.format, clips.seconds; --set to change them)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--clip-hours", type=float, default=None, help="hours of clips cut, before filtering "
                      "(default: the Genie paper's 244k, 55M clips of 16 s)")
    size.add_argument("--source-hours", type=float, default=None, help="hours of source video instead")
    p.add_argument("--mean-video-minutes", type=float, default=10.0, help="mean length of a source video: with "
                   "download.per_host_rate it bounds how fast videos arrive (default 10, an assumption)")
    p.add_argument("--hosts", type=int, default=1, help="sites the videos come from, each with its own "
                   "download.per_host_rate (default 1: all from YouTube)")
    p.add_argument("--mbps-per-worker", type=float, default=100.0, help="download throughput of one worker, "
                   "Mbit/s (default 100, an assumption)")
    p.add_argument("--source-kbps", type=float, default=None, help="bitrate of the downloaded files, kbit/s "
                   "(default: the benchmark's encode of the source format; real streams are often larger)")
    p.add_argument("--source-format", default=None, metavar="CODEC:HEIGHT", help="e.g. vp9:720, instead of "
                   "what download.format selects on YouTube")
    p.add_argument("--workers", type=int, default=None, help="workers to plan for (default: as many as "
                   "--wall-hours needs)")
    p.add_argument("--wall-hours", type=float, default=24.0, help="wall time wanted when --workers is not given")
    p.add_argument("--vcpus-per-worker", type=int, default=4, help="e.g. 4 for n2-standard-4")
    p.add_argument("--price-per-vcpu-hour", type=float, default=0.06,
                   help="your price per vCPU-hour, memory folded in (default 0.06: check your region's price)")
    p.add_argument("--gpu", action="store_true", help="score quality on GPU workers (worker_accelerator)")
    p.add_argument("--gpu-clips-per-s", type=float, default=None, help="clips per second one GPU scores "
                   "(measure it: benchmarks/quality.py on the accelerator)")
    p.add_argument("--price-per-gpu-hour", type=float, default=None)
    p.add_argument("--results", default=None, help="benchmark results directory (default: the checkout's "
                   "benchmarks/results)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return ap


def version() -> str:
    """The installed distribution's version (pyproject.toml's for a checkout run in place)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("genie-pipeline")
    except PackageNotFoundError:
        import tomllib

        with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]


# ---------------------------------------------------------------------------- errors
INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT (128 + 2)

# what each long command leaves behind when interrupted (train says it itself, with its checkpoint)
_AFTER_INTERRUPT = {
    "ingest": "nothing of this run is committed and the output's lock is released; run the same command again "
              "to resume (videos already cut are not cut again)",
    "run": "nothing of this run's ingest is committed and the output's lock is released; run the same command "
           "again to resume",
    "refilter": "the output is as it was or, if its commit had started, the next ingest or refilter finishes it",
}


def _sigterm_as_interrupt(signum, frame) -> None:
    # `kill PID`, a scheduler's stop, a container's shutdown: stopped as cleanly as Ctrl-C
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts():
    """Ctrl-C reaches the terminal's whole process group: the local Beam runner's and the
    DataLoader's worker processes too, which would each die printing a traceback. So while a
    command runs, SIGINT is blocked in every thread and ignored (children inherit that: the
    runner starts its workers through `sh -c`, which keeps an ignored signal ignored, and
    Python then leaves it so), and one thread takes it with sigwait (Linux queues a blocked
    signal even when ignored) and sends the main thread SIGTERM, whose handler raises
    KeyboardInterrupt (or is what training/stop.py installs). SIGTERM (`kill PID`, a scheduler)
    reaches only this process and goes to that handler directly."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_term = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    if not PROGRAM:  # main() called inside another program (tests): Ctrl-C as Python has it
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, old_term)
        return
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    done = threading.Event()

    main_thread = threading.main_thread().ident

    def watch():
        while signal.sigwait({signal.SIGINT}) and not done.is_set():
            # a real signal to the main thread, which also ends a blocking sleep or wait
            signal.pthread_kill(main_thread, signal.SIGTERM)

    watcher = threading.Thread(target=watch, name="interrupt-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.pthread_kill(watcher.ident, signal.SIGINT)
        watcher.join()
        signal.signal(signal.SIGINT, old_int)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGTERM, old_term)


def _exit_code(e: Exception) -> int | None:
    """Exit status for the project's own error types (None: a bug, let it raise). The types
    are imported here, when an error happened, so that `--help` loads no torch."""
    from genie_pipeline.filtering.quality import QualityError
    from genie_pipeline.ingest.config import PreflightError
    from genie_pipeline.ingest.errors import IngestError
    from genie_pipeline.models.config import ModelConfigError
    from genie_pipeline.shards.fs import OutputBusy, StorageError, environment_error
    from genie_pipeline.shards.reader import DataError
    from genie_pipeline.shards.snapshots import SnapshotError
    from genie_pipeline.training.errors import TrainingError

    if isinstance(e, OutputBusy):  # not the user's mistake: another run holds the output
        return 1
    if isinstance(e, (QualityError, DataError, ModelConfigError, TrainingError, PreflightError, StorageError,
                      SnapshotError)):
        return 2
    if isinstance(e, IngestError):
        return 1
    if isinstance(e, FileNotFoundError):  # a path the user gave
        return 2
    if environment_error(e):  # disk full, read-only, no permission
        return 1
    return None


def main(argv: list[str] | None = None) -> int:
    quiet_start()
    ap = build_parser()
    args, rest = ap.parse_known_args(argv)
    if rest and not getattr(args, "beam_passthrough", False):
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if rest:
        from genie_pipeline.ingest.config import beam_flag_error, unknown_beam_flags

        if wrong := beam_flag_error(rest):  # before any other parse: Beam's prints its whole usage
            print(f"genie-pipeline: {wrong}", file=sys.stderr)
            return 2
        bad = unknown_beam_flags(rest)
        if bad:  # Beam would only log these and run anyway
            ap.error(f"unrecognized arguments (neither ours nor Beam pipeline options): {' '.join(bad)}")
    if args.verbose:
        os.environ["GENIE_VERBOSE"] = "1"  # worker processes inherit it
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # a worker's error reaches main() anyway, with its traceback if it is a bug
        for name in ("apache_beam.runners.common", "apache_beam.runners.portability.local_job_service"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        with interrupts():
            return args.func(args, rest)
    except KeyboardInterrupt:
        from genie_pipeline.training.errors import TrainInterrupted

        e = sys.exc_info()[1]
        note = str(e) if isinstance(e, TrainInterrupted) else _AFTER_INTERRUPT.get(args.command, "")
        print(f"genie-pipeline {args.command}: interrupted" + (f"; {note}" if note else ""), file=sys.stderr)
        return INTERRUPTED
    except ConfigError as e:
        print(f"genie-pipeline: config error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        code = _exit_code(e)
        if code is None:
            raise
        if isinstance(e, FileNotFoundError):
            print(f"genie-pipeline {args.command}: {e.strerror.lower() + ': ' + str(e.filename) if e.strerror else e}",
                  file=sys.stderr)
        elif isinstance(e, OSError) and e.strerror:
            print(f"genie-pipeline: {e.strerror.lower()}" + (f": {e.filename}" if e.filename else "")
                  + "; nothing was committed, the next run resumes", file=sys.stderr)
        else:
            print(f"genie-pipeline: {e}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
