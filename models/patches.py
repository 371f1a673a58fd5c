"""Cut video frames into square patches and put them back.

Genie's footage is 160x90, and 90 is divisible by neither 4 (tokenizer patch) nor 16 (LAM
patch), so every image size goes through one explicit rule, chosen by `pad_mode`:

- `pad`  (default): pad the bottom and right edges with zeros up to the next multiple of
  the patch size. `unpatchify` crops the padding off again, so the model returns frames of
  the input size, and `target()` is the input itself. Losses are computed on the real
  pixels only: the padded border is never a target.
  160x90 -> 160x92 with patch 4 (40x23 grid), 160x96 with patch 16 (10x6 grid).
- `crop`: cut the largest centred region whose sides are multiples of the patch size.
  The lost border cannot be restored, so `unpatchify` returns the cropped size and
  `target()` crops the input the same way, for use as the reconstruction target.
  160x90 -> 160x88 with patch 4 (40x22 grid), 160x80 with patch 16 (10x5 grid).

Patches are flattened channel-last within the patch, `(ph pw c)`, so a patch vector of
`P = patch * patch * 3` values is a contiguous block of the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange


@dataclass(frozen=True)
class PatchGrid:
    """The patch layout of frames of one size; holds no weights."""

    height: int
    width: int
    patch: int
    mode: str = "pad"

    def __post_init__(self):
        if self.mode not in ("pad", "crop"):
            raise ValueError(f"mode must be 'pad' or 'crop', got {self.mode!r}")
        if self.patch > min(self.height, self.width):
            raise ValueError(f"patch {self.patch} is larger than the image {self.height}x{self.width}")

    @property
    def tokens_hw(self) -> tuple[int, int]:
        """Patch rows and columns."""
        if self.mode == "pad":
            return -(-self.height // self.patch), -(-self.width // self.patch)
        return self.height // self.patch, self.width // self.patch

    @property
    def num_tokens(self) -> int:
        h, w = self.tokens_hw
        return h * w

    @property
    def out_hw(self) -> tuple[int, int]:
        """Frame size `unpatchify` returns."""
        if self.mode == "pad":
            return self.height, self.width
        h, w = self.tokens_hw
        return h * self.patch, w * self.patch

    def patch_dim(self, channels: int = 3) -> int:
        return self.patch * self.patch * channels

    def _crop_offsets(self) -> tuple[int, int]:
        out_h, out_w = self.out_hw
        return (self.height - out_h) // 2, (self.width - out_w) // 2

    def target(self, video_BTCHW: torch.Tensor) -> torch.Tensor:
        """The part of the input that `unpatchify` can reproduce."""
        self._check_size(video_BTCHW)
        if self.mode == "pad":
            return video_BTCHW
        top, left = self._crop_offsets()
        out_h, out_w = self.out_hw
        return video_BTCHW[..., top : top + out_h, left : left + out_w]

    def patchify(self, video_BTCHW: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> patches_BTNP with N = rows*cols, P = patch*patch*C."""
        self._check_size(video_BTCHW)
        if self.mode == "pad":
            rows, cols = self.tokens_hw
            pad_h = rows * self.patch - self.height
            pad_w = cols * self.patch - self.width
            # F.pad orders pads from the last dim: (left, right, top, bottom).
            fitted_BTCHW = F.pad(video_BTCHW, (0, pad_w, 0, pad_h))
        else:
            fitted_BTCHW = self.target(video_BTCHW)
        return rearrange(
            fitted_BTCHW, "b t c (h ph) (w pw) -> b t (h w) (ph pw c)", ph=self.patch, pw=self.patch
        )

    def unpatchify(self, patches_BTNP: torch.Tensor) -> torch.Tensor:
        """patches_BTNP -> (B, T, C, *out_hw)."""
        rows, cols = self.tokens_hw
        video_BTCHW = rearrange(
            patches_BTNP, "b t (h w) (ph pw c) -> b t c (h ph) (w pw)", h=rows, w=cols, ph=self.patch, pw=self.patch
        )
        out_h, out_w = self.out_hw
        return video_BTCHW[..., :out_h, :out_w]

    def spread(self, values_BN: torch.Tensor) -> torch.Tensor:
        """One value per token (B, N) -> that value on every pixel of its patch, (B, 1, *out_hw)."""
        patches_B1NP = values_BN[:, None, :, None].expand(-1, -1, -1, self.patch * self.patch)
        return self.unpatchify(patches_B1NP)[:, 0]

    def _check_size(self, video_BTCHW: torch.Tensor) -> None:
        if video_BTCHW.ndim != 5 or tuple(video_BTCHW.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"expected video (B, T, C, {self.height}, {self.width}), got {tuple(video_BTCHW.shape)}"
            )
