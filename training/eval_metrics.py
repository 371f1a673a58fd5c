"""The metrics of `genie-pipeline eval`, as pure functions of tensors and arrays.

- `psnr`: peak signal-to-noise ratio of images in [0, 1] (also the trainer's rollout samples).
- `ssim`: structural similarity (Wang et al. 2004) with the standard Gaussian window: 11 taps,
  σ = 1.5, K1 = 0.01, K2 = 0.03, averaged over the valid region and the channels; the same
  number as scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)`.
- `feature_stats`, `frechet_distance`: FVD's distance between two Gaussians fitted to features.
- `bootstrap_ci`: percentile bootstrap interval of a mean over clips.
- `code_usage`: how many latent actions are used, and the perplexity of their use.
- `nmi`, `nmi_chance`, `majority_probe`, `probe_scores`: latent actions against true actions.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(pred: torch.Tensor, target: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """PSNR in dB of images in [0, 1]: -10·log10(MSE), the MSE taken over `dims` (all
    elements when None). The MSE is floored at 1e-10, so identical images score 100 dB."""
    err = (pred.float() - target.float()) ** 2
    mse = err.mean() if dims is None else err.mean(dim=dims)
    return -10.0 * torch.log10(mse.clamp(min=1e-10))


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred_NCHW: torch.Tensor, target_NCHW: torch.Tensor) -> torch.Tensor:
    """SSIM of each of N image pairs in [0, 1], -> (N,). Identical images score 1."""
    if pred_NCHW.shape != target_NCHW.shape or pred_NCHW.ndim != 4:
        raise ValueError(f"expected two (N, C, H, W) batches of one shape, got {tuple(pred_NCHW.shape)} "
                         f"and {tuple(target_NCHW.shape)}")
    N, C, H, W = pred_NCHW.shape
    if min(H, W) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {H}x{W}")
    x, y = pred_NCHW.double(), target_NCHW.double()
    g = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, x.device)
    # separable depthwise filtering over the valid region (no padding): rows, then columns
    rows_C1KW = g.view(1, 1, 1, -1).expand(C, 1, 1, SSIM_WINDOW)
    cols_C1KH = g.view(1, 1, -1, 1).expand(C, 1, SSIM_WINDOW, 1)

    def blur(z):
        return F.conv2d(F.conv2d(z, rows_C1KW, groups=C), cols_C1KH, groups=C)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).float()


# --------------------------------------------------------------------------- FVD
def feature_stats(features_ND: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of N ≥ 2 feature vectors."""
    f = np.asarray(features_ND, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(m_DD: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues from
    rounding are taken as 0)."""
    w, v = np.linalg.eigh((m_DD + m_DD.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||² + tr(sigma1 + sigma2 - 2·(sigma1 sigma2)^½).

    tr((sigma1 sigma2)^½) is computed as tr((s sigma2 s)^½) with s = sigma1^½, a symmetric PSD
    matrix: no complex parts, and stable for the singular covariances of fewer clips than
    feature dimensions."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    s = _sqrt_psd(sigma1)
    inner = s @ sigma2 @ s
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


# --------------------------------------------------------------------------- intervals
def bootstrap_ci(values_N, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values_N` (resampling the N values with
    replacement, `n_boot` times, from a generator seeded by `seed`)."""
    v = np.asarray(values_N, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("bootstrap_ci of no values")
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- latent actions
def code_usage(ids, num_codes: int) -> dict:
    """Use of `num_codes` discrete codes: `counts` per code, `usage` (share of codes used at
    least once) and `perplexity` (exp of the entropy of the use: 1 for one code, num_codes
    for uniform use)."""
    counts = np.bincount(np.asarray(ids, dtype=np.int64).ravel(), minlength=num_codes)[:num_codes]
    total = counts.sum()
    share = counts[counts > 0] / max(total, 1)
    return {"counts": [int(c) for c in counts], "usage": float((counts > 0).mean()),
            "perplexity": float(math.exp(-(share * np.log(share)).sum())) if total else 0.0}


def nmi(labels_a, labels_b) -> float:
    """Normalised mutual information of two labelings (arithmetic normalisation): 1 when one
    determines the other, about 0 when they are independent."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(np.asarray(labels_a).ravel(), np.asarray(labels_b).ravel()))


def nmi_chance(labels_a, labels_b, shuffles: int = 20, seed: int = 0) -> float:
    """The NMI independent labelings of the same sizes and label frequencies reach: the mean
    over `shuffles` random permutations of `labels_b`. NMI is biased upward on a finite sample
    (more so with many labels), so a measured NMI means something only well above this."""
    a, b = np.asarray(labels_a).ravel(), np.asarray(labels_b).ravel()
    rng = np.random.default_rng(seed)
    return float(np.mean([nmi(a, rng.permutation(b)) for _ in range(shuffles)]))


def majority_probe(latent_fit, true_fit, latent_test) -> np.ndarray:
    """The smallest probe of true actions from latent ones: each latent action predicts the
    true action it most often came with in the fit set (ties: the smaller id); a latent action
    unseen there predicts the fit set's most common true action. Returns the predictions for
    `latent_test`."""
    latent_fit, true_fit = np.asarray(latent_fit).ravel(), np.asarray(true_fit).ravel()
    if latent_fit.size == 0:
        raise ValueError("majority_probe needs labelled transitions to fit on")
    fallback = np.bincount(true_fit).argmax()
    table = {int(a): np.bincount(true_fit[latent_fit == a]).argmax() for a in np.unique(latent_fit)}
    return np.array([table.get(int(a), fallback) for a in np.asarray(latent_test).ravel()], dtype=np.int64)


def probe_scores(latent_BA, true_BA, shuffles: int = 20, seed: int = 0) -> dict:
    """How well latent actions predict true ones, by clip-level cross-validation: for each clip
    (row) a `majority_probe` fit on the labelled transitions (true >= 0) of all other clips
    predicts that clip's. Every labelled transition is scored once, by a probe that never saw
    its clip; clips, not transitions, are held out because neighbouring transitions of one
    clip share their true action.

    - `accuracy`: the probe's share of correct predictions;
    - `constant`: the same cross-validation with every latent action replaced by one code, so
      each clip is predicted as the most common true action of the other clips: what this
      probe scores when latent actions carry nothing (its chance level);
    - `shuffled`: the mean accuracy over `shuffles` runs with the latent actions permuted across
      the labelled transitions (the codes keep their frequencies, lose any link to the true
      actions): chance for a probe that overfits rare codes;
    - `best_constant`: the share of the most common true action over all labelled transitions,
      the best any constant guess could score chosen in hindsight (an upper bound for a
      constant, not a level a probe can reach without the answers);
    - `clips`, `transitions`: the clips with labels (at least 2 are needed) and their transitions.
    """
    latent_BA, true_BA = np.asarray(latent_BA), np.asarray(true_BA)
    if latent_BA.shape != true_BA.shape or latent_BA.ndim != 2:
        raise ValueError(f"expected latent and true actions of one (clips, transitions) shape, got "
                         f"{latent_BA.shape} and {true_BA.shape}")
    labelled_BA = true_BA >= 0
    clips = [i for i in range(len(true_BA)) if labelled_BA[i].any()]
    if len(clips) < 2:
        raise ValueError(f"probe_scores needs labelled transitions in at least 2 clips, got {len(clips)}")
    true = true_BA[labelled_BA]
    clip_of = np.broadcast_to(np.arange(len(true_BA))[:, None], true_BA.shape)[labelled_BA]

    def cross_validated(latent) -> float:
        correct = 0
        for i in clips:
            held = clip_of == i
            correct += int((majority_probe(latent[~held], true[~held], latent[held]) == true[held]).sum())
        return correct / true.size

    latent = latent_BA[labelled_BA]
    rng = np.random.default_rng(seed)
    return {"accuracy": cross_validated(latent), "constant": cross_validated(np.zeros_like(latent)),
            "shuffled": float(np.mean([cross_validated(rng.permutation(latent)) for _ in range(shuffles)])),
            "best_constant": float(np.bincount(true).max() / true.size), "clips": len(clips),
            "transitions": int(true.size)}
