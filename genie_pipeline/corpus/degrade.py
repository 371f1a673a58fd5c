"""The `quality` corpus's videos: any footage (Atari, CoinRun, robot arms) through any degradation.

The `small` and `full` corpora render each degradation from Atari footage in generate.py; the
`quality` corpus needs every degradation on platformers AND robots, so here a degradation is a
function of a frame source (`Footage`: the next frame of a game or an arm, and its still).

What each degradation looks like, and how much of the frame it covers (README "The quality
corpus" has the same table for users to compare with their footage):

    clean           the footage, stretched to the frame (CoinRun: fitted, black side bars)
    compression     whole frame: blocks of one colour (a 40th of the width: 4x4 px at 160x90),
                    12 colour levels, encoded at crf 51 (the mush of a starved bitrate)
    static_menu     whole frame: the game's title screen (an arm: its first camera frame)
                    held, with +-1 grey level of noise
    map_screen      a frozen game frame, dimmed, under a menu panel of 60% x 70% of the frame
                    (42%) with text rows and a blinking cursor: a map/pause menu left open
    webcam_overlay  gameplay with a face-cam box of 42% x 56% of the frame (24%) in a corner
    chat_overlay    gameplay with a chat column on the right, 34% of the width, full height,
                    dark, its coloured text rows scrolling up
    black           whole frame: the footage at 4% brightness (a dead capture card)
    fade            gameplay in 2-4 s runs, each fading to black over 1 s and held black 2-4 s
                    (about half of the time black)
    letterbox       the footage in a box of 25% x 30% of the frame (7.5%), black around it
    blur            whole frame: the footage downscaled 24x and upscaled (out of focus)
    title_card      whole frame: a static card, one background colour and block "letters",
                    +-2 grey levels of noise
    slideshow       stills of 4 sources, each held 2.5-3.5 s
    rapid_cuts      4 sources, a cut every ~0.3 s
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ROBOTS = ("kuka", "panda", "xarm")
KINDS = ("compression", "static_menu", "map_screen", "webcam_overlay", "chat_overlay", "black", "fade",
         "letterbox", "blur", "title_card", "slideshow", "rapid_cuts")
MONTAGES = ("slideshow", "rapid_cuts")
ROBOT_RENDER_FPS = 10  # the TinyRenderer's budget: a render per 0.1 s, held between


class Footage:
    """Frames of one source at `fps`: `next()` the next picture, `still` its first picture."""

    def __init__(self, game: str, seed: int, fps: int, width: int, height: int):
        from . import render as R

        self.game, self.fps, self.width, self.height = game, fps, width, height
        self.i = 0
        self._img = None
        if game in ROBOTS:
            # rendered small: the ingest keeps 160x90, and the CPU renderer's cost is per pixel
            self.arm = R.ArmSim(game, seed, width=160, height=90)
            self.still = self.next()
        elif game == "coinrun":
            self.agent = R.CoinRunAgent(seed, level=int(np.random.default_rng(seed).integers(0, 10_000)))
            self.still = self.next()
        else:
            self.agent = R.AtariAgent(game, seed, frameskip=max(1, R.ATARI_FPS // fps))
            self.still = self.agent.title_frame

    def next(self) -> np.ndarray:
        from . import render as R

        i, self.i = self.i, self.i + 1
        if self.game in ROBOTS:
            self.arm.advance(1 / self.fps)
            if self._img is None or int(i * ROBOT_RENDER_FPS / self.fps) != int((i - 1) * ROBOT_RENDER_FPS / self.fps):
                self._img = self.arm.render()
            return self._img
        if self.game == "coinrun":
            if self._img is None or int(i * 15 / self.fps) != int((i - 1) * 15 / self.fps):  # 15 steps/s
                self._img = R.fit(self.agent.step(), self.width, self.height)
            return self._img
        return self.agent.step()

    def close(self) -> None:
        if self.game in ROBOTS:
            self.arm.close()


def _blocky(rgb: np.ndarray, width: int, height: int, levels: int = 12) -> np.ndarray:
    from .encode import resize_rgb

    block = max(2, width // 40)  # 8 px at 320 wide, 4 px at 160: what is left at 160x90 either way

    small = resize_rgb(rgb, width // block, height // block, "AREA")
    step = 256 // levels
    small = (small // step) * step + step // 2
    return np.repeat(np.repeat(small, block, 0), block, 1)


def _map_panel(frozen: np.ndarray, width: int, height: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple]:
    from .encode import resize_rgb

    base = (resize_rgb(frozen, width, height).astype(np.float32) * 0.45).astype(np.uint8)
    pw, ph = int(width * 0.6), int(height * 0.7)
    x0, y0 = (width - pw) // 2, (height - ph) // 2
    base[y0:y0 + ph, x0:x0 + pw] = rng.integers(10, 60, 3)
    base[y0:y0 + 3, x0:x0 + pw] = base[y0 + ph - 3:y0 + ph, x0:x0 + pw] = 230
    rows = []
    row_h = max(6, ph // 9)
    for r in range(1, 8):
        y = y0 + r * row_h
        w = int(pw * rng.uniform(0.3, 0.7))
        base[y:y + row_h // 2, x0 + pw // 6:x0 + pw // 6 + w] = rng.integers(150, 255, 3)
        rows.append(y)
    return base, (x0 + pw // 12, rows, max(4, row_h // 2))


class _Chat:
    """A chat column: coloured text rows scrolling up."""

    def __init__(self, width: int, height: int, rng: np.random.Generator):
        self.w, self.h, self.rng = int(width * 0.34), height, rng
        self.row_h = max(6, height // 22)
        self.rows = [self._row() for _ in range(height // self.row_h + 2)]
        self.offset = 0.0

    def _row(self) -> tuple:
        r = self.rng
        return (r.integers(80, 256, 3), int(self.w * r.uniform(0.15, 0.3)), int(self.w * r.uniform(0.2, 0.6)))

    def draw(self, frame: np.ndarray, speed: float) -> np.ndarray:
        out = frame.copy()
        W = out.shape[1]
        x0 = W - self.w
        out[:, x0:] = (out[:, x0:].astype(np.uint16) * 0.2 + 12).astype(np.uint8)
        self.offset += speed
        while self.offset >= self.row_h:
            self.offset -= self.row_h
            self.rows.pop(0)
            self.rows.append(self._row())
        for k, (col, name_w, text_w) in enumerate(self.rows):
            y = int(k * self.row_h - self.offset)
            if y < 0 or y + self.row_h // 2 > self.h:
                continue
            out[y + 1:y + self.row_h // 2, x0 + 4:x0 + 4 + name_w] = col
            out[y + 1:y + self.row_h // 2, x0 + 8 + name_w:min(W - 2, x0 + 8 + name_w + text_w)] = 200
        return out


def _title_card(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    card = np.empty((height, width, 3), np.uint8)
    card[:] = rng.integers(0, 200, 3)
    ink = rng.integers(0, 256, 3)
    lh = height // 8
    for line, y in enumerate((height // 3, height // 3 + int(lh * 1.6))):
        x = width // 8
        while x < width * 7 // 8 - lh:
            w = int(lh * rng.uniform(0.4, 0.9))
            card[y:y + (lh if line == 0 else lh // 2), x:x + w] = ink
            x += w + lh // 4 + (lh if rng.random() < 0.2 else 0)
    return card


def frames(spec: dict, rng: np.random.Generator):
    """The frames of a `quality` corpus video (display size, any source size: the writer scales)."""
    from . import render as R
    from .encode import resize_rgb

    how, fps, seed = spec["made_how"], spec["fps"], spec["seed"]
    W, H = spec["width"], spec["height"]
    n = int(round(spec["duration"] * fps))
    if how in MONTAGES:
        srcs = [Footage(g, seed + k, fps, W, H) for k, g in enumerate(spec["games"])]
    else:
        srcs = [Footage(spec["game"], seed, fps, W, H)]
    src = srcs[0]
    try:
        if how == "clean":
            for _ in range(n):
                yield src.next()
        elif how == "compression":
            for _ in range(n):
                yield _blocky(resize_rgb(src.next(), W, H), W, H)
        elif how == "static_menu":
            for _ in range(n):
                yield R.add_noise(src.still, rng, 1)
        elif how == "map_screen":
            for _ in range(int(rng.integers(20, 120))):
                src.next()
            panel, (cx, rows, size) = _map_panel(src.next(), W, H, rng)
            sel = 0
            for i in range(n):
                if i % int(fps * 1.5) == 0 and rng.random() < 0.5:
                    sel = int(rng.integers(0, len(rows)))
                fr = panel.copy()
                if (i // max(1, fps // 3)) % 2 == 0:  # the cursor blinks
                    fr[rows[sel]:rows[sel] + size, cx:cx + size] = 255
                yield fr
        elif how == "webcam_overlay":
            cam = R.Webcam(rng, int(W * 0.42) // 2 * 2, int(H * 0.56) // 2 * 2)
            corner = ["br", "bl", "tr"][int(rng.integers(0, 3))]
            for i in range(n):
                yield R.overlay_corner(resize_rgb(src.next(), W, H), cam.patch(i / fps), corner, margin=max(4, W // 80))
        elif how == "chat_overlay":
            chat = _Chat(W, H, rng)
            for _ in range(n):
                yield chat.draw(resize_rgb(src.next(), W, H), speed=H / 22 * 2.5 / fps * float(rng.uniform(0.5, 2)))
        elif how == "black":
            for _ in range(n):
                yield R.darken(src.next(), rng)
        elif how == "fade":
            yield from _fade(src, n, fps, rng)
        elif how == "letterbox":
            bw, bh = int(W * 0.25) // 2 * 2, int(H * 0.3) // 2 * 2
            for _ in range(n):
                yield R.letterbox(src.next(), W, H, bw, bh)
        elif how == "blur":
            for _ in range(n):
                yield R.blur(src.next(), W, H)
        elif how == "title_card":
            card = _title_card(W, H, rng)
            for _ in range(n):
                yield R.add_noise(card, rng, 2)
        elif how == "rapid_cuts":
            cur, left = 0, 0
            for _ in range(n):
                if left <= 0:
                    cur = (cur + 1 + int(rng.integers(0, len(srcs) - 1))) % len(srcs)
                    left = max(1, int(rng.integers(7, 12) * fps / 30))
                left -= 1
                yield resize_rgb(srcs[cur].next(), W, H)
        elif how == "slideshow":
            i, k = 0, 0
            while i < n:
                s = srcs[k % len(srcs)]
                k += 1
                for _ in range(int(rng.integers(40, 200) * fps / 30)):
                    still = s.next()
                hold = min(n - i, int(rng.integers(75, 106) * fps / 30))
                big = resize_rgb(still, W, H)
                for _ in range(hold):
                    yield big
                i += hold
        else:
            raise ValueError(f"no renderer for {how!r}")
    finally:
        for s in srcs:
            s.close()


def _fade(src: Footage, n: int, fps: int, rng: np.random.Generator):
    i = 0
    while i < n:
        for _ in range(int(rng.uniform(2, 4) * fps)):  # a run of play
            yield src.next()
            i += 1
        for k in range(fps):  # fading out over 1 s
            yield (src.next().astype(np.float32) * (1 - (k + 1) / fps)).astype(np.uint8)
            i += 1
        dark = np.zeros_like(src.still)
        for _ in range(int(rng.uniform(2, 4) * fps)):
            yield _dark_noise(dark, rng)
            i += 1


def _dark_noise(dark: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 3, dark.shape[:2], dtype=np.uint8)[..., None].repeat(3, 2)


def render(spec: dict, path: Path) -> None:
    """Write the `quality` corpus video `spec` to `path` (exactly duration x fps frames)."""
    from .encode import VideoWriter

    n = int(round(spec["duration"] * spec["fps"]))
    rng = np.random.default_rng(spec["seed"] + 1)
    with VideoWriter(path, spec["width"], spec["height"], spec["fps"],
                     crf=51 if spec["made_how"] == "compression" else 23) as w:
        for k, fr in enumerate(frames(spec, rng)):
            if k >= n:
                break
            w.write(fr)
