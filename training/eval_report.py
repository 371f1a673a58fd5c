"""The report of `genie-pipeline eval`: eval.json, eval.html (self-contained, every picture
inline), atlas.png and rollout.gif."""
from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from .metrics import save_gif, save_png

ATLAS_STEPS = 5  # each latent action repeated this often in the atlas
BASELINE_NAMES = {"shuffled": "another clip's actions", "uniform": "uniformly random codes",
                  "most_frequent": "the most frequent code"}


# ============================================================================ the report
def write_report(out: Path, report: dict, media: dict) -> dict:
    """eval.json, eval.html (self-contained: every picture inline), atlas.png, rollout.gif."""
    out.mkdir(parents=True, exist_ok=True)
    save_png(media["atlas"], out / "atlas.png")
    gif = [np.repeat(np.repeat(f, 2, 0), 2, 1) for f in media["rollout_frames"]]
    save_gif(gif, out / "rollout.gif", fps=4)
    report["files"] = {"json": "eval.json", "html": "eval.html", "atlas": "atlas.png", "rollout": "rollout.gif"}
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    (out / "eval.html").write_text(render_html(report, {"atlas": ("image/png", (out / "atlas.png").read_bytes()),
                                                        "rollout": ("image/gif", (out / "rollout.gif").read_bytes())}))
    report["out_dir"] = str(out)
    return report


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _plot_png(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _plots(report: dict) -> dict[str, bytes]:
    dyn, delta, lam = report["dynamics"], report["delta_psnr"], report["lam"]
    steps = [s["t"] for s in delta["per_step"]]

    def psnr_plot(ax):
        ax.plot(steps, dyn["psnr_per_step"], "o-", label="inferred actions")
        for name, values in dyn["baselines"].items():
            ax.plot(steps, values, "--", label=BASELINE_NAMES[name])
        ax.plot(steps, dyn["copy_prompt"]["psnr_per_step"], "k:", label="copy the prompt frame")
        bound = report.get("tokenizer_bound", {}).get("psnr_per_step", [])[:len(steps)]
        if bound:
            ax.plot(steps[:len(bound)], bound, "g-.", label="tokenizer bound (true tokens decoded)")
        ax.set(xlabel="generated step t", ylabel="PSNR (dB)",
               title=f"Rollout PSNR per step ({report['default_sampler']})")
        ax.legend()

    def delta_plot(ax):
        ax.fill_between(steps, [s["ci95"][0] for s in delta["per_step"]], [s["ci95"][1] for s in delta["per_step"]],
                        alpha=0.3, label="95 % bootstrap interval")
        ax.plot(steps, [s["value"] for s in delta["per_step"]], "o-", label="ΔtPSNR")
        ax.axhline(0, color="black", lw=0.8)
        ax.set(xlabel="generated step t", ylabel="dB", title="ΔtPSNR: inferred minus another clip's actions")
        ax.legend()

    def usage_plot(ax):
        ax.bar(range(len(lam["counts"])), lam["counts"])
        ax.set(xlabel="latent action", ylabel="transitions", title="Latent action use on the validation windows")

    return {"psnr": _plot_png(psnr_plot), "delta": _plot_png(delta_plot), "usage": _plot_png(usage_plot)}


def _fmt(x, unit: str = "", digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}{unit}"


def _interval(d: dict) -> str:
    return f"{_fmt(d['value'], ' dB')} (95 % interval {_fmt(d['ci95'][0])} to {_fmt(d['ci95'][1])})"


def _summary_rows(r: dict) -> list[tuple[str, str]]:
    fv, tr = r["fvd"], r["true_actions"]
    rows = []
    for label, s in r["samplers"].items():
        t = s["delta_psnr"]["t"]
        for name, against in s["delta_psnr"]["against"].items():
            rows.append((f"ΔtPSNR at t = {t} vs {BASELINE_NAMES[name]} ({label})", _interval(against)))
        rows.append((f"PSNR at t = 1..4, model vs copying the prompt ({label})",
                     " / ".join(f"{m:.2f} vs {c:.2f}" for m, c in zip(s["dynamics"]["psnr_per_step"][:4],
                                                                     r["copy_prompt"]["psnr_per_step"][:4]))))
    if "tokenizer_bound" in r:
        rows.append(("PSNR at t = 1..4 with every token right (tokenizer bound)",
                     " / ".join(f"{b:.2f}" for b in r["tokenizer_bound"]["psnr_per_step"][:4])))
    rows += [
            ("tokenizer reconstruction", f"PSNR {_fmt(r['tokenizer']['psnr'], ' dB')}, SSIM "
                                         f"{_fmt(r['tokenizer']['ssim'], '', 4)}"),
            ("FVD", _fmt(fv["value"], "", 1) + f" ({fv['clips']} clips of {fv['frames']} frames)"
             if fv.get("available") else f"unavailable: {fv['reason']}"),
            ("LAM codebook", f"{r['lam']['usage'] * 100:.0f} % of {r['lam']['num_actions']} actions used, "
                             f"perplexity {_fmt(r['lam']['perplexity'])}")]
    if tr["available"]:
        groups = [("true actions", tr)]
        if "effect_classes" in tr:
            groups.append((f"true effect classes ({', '.join(tr['effect_classes']['names'])})", tr["effect_classes"]))
        for label, g in groups:
            rows.append((f"latent vs {label}: NMI", f"{g['nmi']:.3f} over {g['transitions']} transitions "
                                                    f"(shuffled labels: {g['nmi_chance']:.3f})"))
            p = g["majority_vote"]
            rows.append((f"per-code majority vote for {label} (a lookup table, not a learned probe)", (
                f"accuracy {p['accuracy']:.3f} (leave-one-clip-out over {p['clips']} clips); chance: the vote "
                f"with no latent information {p['constant']:.3f}, with shuffled latents {p['shuffled']:.3f}; "
                f"the most common label's share {p['best_constant']:.3f}")
                if "accuracy" in p else f"unavailable: {p['reason']}"))
    else:
        rows.append(("latent vs true actions", f"unavailable: {tr['reason']}"))
    return rows


def render_html(report: dict, images: dict[str, tuple[str, bytes]]) -> str:
    """The report as one HTML page with every picture inline (no external resource)."""
    e = html.escape
    plots = _plots(report)
    img = {k: _data_uri("image/png", v) for k, v in plots.items()} | {k: _data_uri(*v) for k, v in images.items()}
    table = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _summary_rows(report))
    sources = ", ".join(e(os.path.basename(s)) for s in report["data"][:6]) + (" …" if len(report["data"]) > 6 else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>genie-pipeline eval</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}th,td{{text-align:left;padding:4px 10px;border-bottom:1px solid #ddd}}
img{{max-width:100%;image-rendering:pixelated}}figcaption{{color:#555;font-size:90%}}</style></head><body>
<h1>World model evaluation</h1>
<p>Checkpoint <code>{e(report["checkpoint"])}</code>; {report["clips"]} validation clips, one {report["frames"]}-frame
window each (seed {report["seed"]}), from {sources}.</p>
<table>{table}</table>
<h2>Dynamics</h2>
<p>From each clip's first frame the dynamics model generates {report["frames"] - 1} frames, with the latent actions
the LAM infers from the true clip, with the actions inferred from another held-out clip (the headline baseline), with
uniformly random codes and with the most frequent code (same sampling noise for all). A model that responds to actions
scores higher with the inferred ones: ΔtPSNR above 0. A model that has learned motion beats copying the prompt frame.
Plots: sampler {e(report["default_sampler"])}.</p>
<figure><img alt="PSNR per step" src="{img["psnr"]}"><img alt="delta PSNR per step" src="{img["delta"]}"></figure>
<figure><img alt="rollouts" src="{img["rollout"]}"><figcaption>Each row a clip: true frames, rollout with inferred
actions, rollout with another clip's actions.</figcaption></figure>
<h2>Latent actions</h2>
<figure><img alt="action atlas" src="{img["atlas"]}"><figcaption>Action atlas: row k repeats latent action k
{ATLAS_STEPS} times from each start frame (start frame first).</figcaption></figure>
<figure><img alt="latent action use" src="{img["usage"]}"></figure>
</body></html>
"""
