"""A clip's perceptual fingerprint: 128 bits from its decoded frames, written "v3:" + 32 hex digits.

Computed from the frames already in memory when a clip is cut (no second decode). Two clips
of the same footage (a byte copy, a re-encode at another resolution or bitrate, a re-upload
with a few per cent cropped off, even at one corner) get fingerprints a few bits apart;
different footage, even another level of the same game, differs in about half of the bits.

How (numpy only): the clip is turned to luma, black borders (letterbox or pillarbox bars,
whether ours from `clips.aspect: pad` or burnt into the upload) are trimmed, and the frames
are averaged into `SEGMENTS` time segments of 32×32 block means. A 3-D DCT of that volume
keeps, for each of the 16 temporal frequencies, the 8 lowest spatial ones (u, v < 3 but not
(2, 2)): the coarse layout of the picture and how it changes over the clip. Only the lowest
spatial frequencies are kept because a crop shifts the picture, and a shift turns the phase
of frequency k by k times as much; the length comes from time, where a crop changes little.
Each coefficient gives one bit, set when it is above the median of the 127 non-constant
ones; the constant term's bit says whether the clip is brighter than mid-grey. Compare two
with `shards.dedupe.hamming`.

Why 128 bits: a fixed share of differing bits is far less likely by chance in a longer
fingerprint. Measured on the sample corpora (tests/test_dedupe.py), copies stay within 19 %
of the bits in both versions (12 of 64, 24 of 128), but two unrelated fingerprints come
within that share with probability 2.3e-7 at 64 bits and 2.3e-13 at 128: at 30M committed
clips, 7 chance matches per new clip against 7e-6. On the full sample corpus, windows of
different videos within the distance fell from 4 of 18,002 pairs to 1 (two runs of one game
on one screen).

The "v3:" prefix is the recipe's version: fingerprints of other versions ("v2:" and the 16
bare hex digits of version 1, from outputs written before) are never compared with these.
"""
from __future__ import annotations

import numpy as np

VERSION = "v3"
SEGMENTS = 16  # time segments; also the temporal DCT coefficients kept
SIDE = 32  # block means per side before the spatial DCT
# the spatial DCT frequencies kept, the 8 lowest: (u, v) below 3 but not (2, 2); SEGMENTS * 8 == 128 bits
SPATIAL = [(u, v) for u in range(3) for v in range(3) if (u, v) != (2, 2)]
FRAME_STEP = 2  # every other frame: 5 per segment of a 160-frame clip, half the cost
BLACK = 24  # luma at or below which a border row or column counts as a bar
MAX_BORDER = 0.3  # never trim more than this share of a side (a dark game stays whole)

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def fingerprint(frames_THWC: np.ndarray) -> str:
    """The fingerprint of a clip (uint8 RGB frames, T × H × W × 3): VERSION, ":" and 128 bits
    as 32 lowercase hex digits. Deterministic; raises ValueError for an empty clip."""
    if frames_THWC.ndim != 4 or frames_THWC.shape[0] == 0 or frames_THWC.shape[-1] != 3:
        raise ValueError(f"fingerprint needs T×H×W×3 frames, got shape {frames_THWC.shape}")
    luma = luma_of(frames_THWC[::FRAME_STEP])
    luma = _trim_borders(luma)
    volume = np.stack([_block_means(seg.mean(axis=0)) for seg in np.array_split(luma, SEGMENTS)
                       if len(seg)] or [_block_means(luma.mean(axis=0))])
    if len(volume) < SEGMENTS:  # a clip shorter than SEGMENTS sampled frames
        volume = np.concatenate([volume, np.repeat(volume[-1:], SEGMENTS - len(volume), axis=0)])
    # only the lowest 3 × 3 spatial frequencies are kept: transform to those alone
    dct = np.einsum("ky,tyx,lx->tkl", _basis(volume.shape[1], 3), volume, _basis(volume.shape[2], 3))
    dct = np.einsum("st,tkl->skl", _basis(len(volume), SEGMENTS), dct)
    coeffs = np.stack([dct[:, u, v] for u, v in SPATIAL], axis=1).ravel()
    bits = coeffs > np.median(coeffs[1:])
    bits[0] = volume.mean() > 127.5
    return f"{VERSION}:{int(''.join('1' if b else '0' for b in bits), 2):0{len(bits) // 4}x}"


def _trim_borders(luma: np.ndarray) -> np.ndarray:
    """Drop outer rows and columns that are black in every sampled frame (bars), at most
    MAX_BORDER of each side, so a letterboxed and a full-frame copy hash alike."""
    rows, cols = luma.max(axis=(0, 2)), luma.max(axis=(0, 1))

    def span(profile: np.ndarray) -> tuple[int, int]:
        n, cap = len(profile), int(len(profile) * MAX_BORDER)
        lit = np.flatnonzero(profile > BLACK)
        if not len(lit):
            return 0, n
        return min(int(lit[0]), cap), max(int(lit[-1]) + 1, n - cap)

    (r0, r1), (c0, c1) = span(rows), span(cols)
    return luma[:, r0:r1, c0:c1]


def _block_means(img: np.ndarray) -> np.ndarray:
    """SIDE × SIDE block means of a 2-D image (area resampling; any size works, even one
    smaller than SIDE, whose pixels are then repeated)."""
    h, w = img.shape
    ys = np.minimum((np.arange(SIDE + 1) * h) // SIDE, h - 1)
    xs = np.minimum((np.arange(SIDE + 1) * w) // SIDE, w - 1)
    ys[-1], xs[-1] = h, w
    integral = np.zeros((h + 1, w + 1), np.float64)
    integral[1:, 1:] = img.cumsum(0).cumsum(1)
    y0, y1 = ys[:-1], np.maximum(ys[1:], ys[:-1] + 1)
    x0, x1 = xs[:-1], np.maximum(xs[1:], xs[:-1] + 1)
    total = (integral[y1][:, x1] - integral[y0][:, x1] - integral[y1][:, x0] + integral[y0][:, x0])
    return total / ((y1 - y0)[:, None] * (x1 - x0)[None, :])


def luma_of(frames_THWC: np.ndarray) -> np.ndarray:
    """float32 luma (BT.601 weights) of uint8 RGB frames. A weighted sum, not `@ _LUMA`: a
    matrix product goes through BLAS, whose threads spin on every core for these small
    products and cost several times the arithmetic in CPU time (the fingerprint took 18 ms of
    CPU a clip that way, 8 ms with one BLAS thread)."""
    w = _LUMA
    return frames_THWC[..., 0] * w[0] + frames_THWC[..., 1] * w[1] + frames_THWC[..., 2] * w[2]


def _basis(n: int, k: int) -> np.ndarray:
    """The first `k` rows of the orthonormal DCT-II matrix of size n (einsum, not BLAS: see luma_of)."""
    rows, i = np.arange(k)[:, None], np.arange(n)[None, :]
    basis = np.cos(np.pi * (2 * i + 1) * rows / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis
