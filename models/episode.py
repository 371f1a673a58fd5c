"""An interactive rollout: a prompt frame, then one generated frame per action, with undo.

    episode = genie.start(prompt_BCHW, steps=25, temperature=2.0, seed=0)
    frame_BCHW = episode.step(3)      # latent action 3 for every sample (or a (B,) tensor)
    episode.undo()                    # back one frame
    episode.frames                    # [prompt as shown, frame 1, ...], each (B, 3, H, W)

The context window. The models were trained on clips of `cfg.frames` frames (W) whose
first frame sits at time position 0 and has no leading action. Frame t is generated and
decoded from a window of frames [s, t] that obeys the same rules: at most W frames, the
first at position 0 with no action. While the episode is shorter than W the window starts
at the prompt. When the next frame would make it longer than W, the window restarts at the
last `W // 2` frames. A restart re-runs those frames once (absolute time positions and
causal attention over several layers make the cached keys of a frame depend on where its
window starts, so a window cannot slide one frame at a time without re-running it);
between restarts no past frame is ever re-run. Amortised that is about one extra frame per
step, against the W frames per MaskGIT step and per decode that the uncached path re-runs.

Prompt detail (`prompt_detail`, default the config's `dynamics.prompt_detail`). The tokenizer
loses detail of the prompt that a background that does not move keeps. With it on, the
frames shown add the prompt's lost detail (prompt - decoded prompt) back on each patch whose
token is the prompt's token there, so `frames[0]` is the prompt itself and an unchanged patch
shows the prompt's pixels; a patch whose token changed shows the decoder's pixels alone.
Only the pixels shown change: tokens, and so what the dynamics model sees, do not.

Caching. With `cache=True` two temporal KV caches cover the window: the dynamics model's
(each MaskGIT step runs only the new frame against it) and the tokenizer decoder's (each
new frame decodes alone). With `cache=False` every MaskGIT step and every decode re-runs
the whole window: slow, and the reference the cache is tested against. Both paths draw
their random numbers from the episode's own generator in the same order, so for the same
seed they give the same tokens and (up to float rounding) the same pixels.
"""

from __future__ import annotations

import torch

from .config import KEEP_BIAS_MAX
from .st_transformer import KVCache


class Episode:
    """A rollout a user steps through; build it with `Genie.start`.

    genie: a Genie (tokenizer, dynamics; the LAM is not used). prompt_BCHW: float in
    [0, 1] at the model's frame size. steps / temperature default to the dynamics config
    (`maskgit_steps`, `temperature`), as do `prompt_detail` and `keep_bias`; `greedy=True`
    takes the most likely token everywhere (deterministic). `seed` seeds the episode's own
    torch.Generator; the global RNG is never touched.
    """

    def __init__(self, genie, prompt_BCHW: torch.Tensor, *, steps: int | None = None,
                 temperature: float | None = None, greedy: bool = False, cache: bool = True, seed: int = 0,
                 prompt_detail: bool | None = None, keep_bias: float | None = None):
        dyn_cfg = genie.cfg.dynamics
        self.genie = genie
        self.steps = steps or dyn_cfg.maskgit_steps
        self.temperature = dyn_cfg.temperature if temperature is None else temperature
        self.greedy = greedy
        self.prompt_detail = dyn_cfg.prompt_detail if prompt_detail is None else prompt_detail
        self.keep_bias = dyn_cfg.keep_bias if keep_bias is None else keep_bias
        if not 0 <= self.keep_bias < KEEP_BIAS_MAX:  # NaN fails too
            raise ValueError(f"keep_bias must be in [0, {KEEP_BIAS_MAX:g}), got {self.keep_bias!r}")
        self.cache = cache
        self.window = genie.cfg.frames
        self.keep = max(1, self.window // 2)
        self.num_actions = genie.cfg.lam.num_actions
        self.device = next(genie.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        expected = (3, genie.cfg.image_height, genie.cfg.image_width)
        if prompt_BCHW.ndim != 4 or tuple(prompt_BCHW.shape[1:]) != expected:
            raise ValueError(f"prompt must be (B, {', '.join(map(str, expected))}), got {tuple(prompt_BCHW.shape)}")

        self.frames: list[torch.Tensor] = []
        self.actions: list[int | torch.Tensor] = []
        self._tokens: list[torch.Tensor] = []  # (B, N) per frame
        self._action_ids: list[torch.Tensor] = []  # (B,) long per transition
        self._starts: list[int] = []  # window start each frame was made with
        self._dyn_cache: KVCache | None = None  # both caches cover frames [_starts[-1], len - 1]
        self._dec_cache: KVCache | None = None
        self._detail_BCHW: torch.Tensor | None = None  # prompt - decoded prompt, where prompt_detail
        with torch.no_grad():
            prompt_B1CHW = prompt_BCHW.to(self.device)[:, None]
            tokens_B1N = genie.tokenizer.encode(prompt_B1CHW)
            decoded_BCHW = self._append(tokens_B1N[:, 0], None, start=0)
            if self.prompt_detail:
                self._detail_BCHW = genie.tokenizer.grid.target(prompt_B1CHW)[:, 0] - decoded_BCHW
                self.frames[0] = self._shown(tokens_B1N[:, 0], decoded_BCHW)

    @property
    def batch(self) -> int:
        return self._tokens[0].shape[0]

    @torch.no_grad()
    def step(self, action: int | torch.Tensor) -> torch.Tensor:
        """Generate and return the next frame (B, 3, H, W) under `action`: an action id in
        [0, num_actions) for every sample, or a (B,) tensor of them."""
        action_B = self._action_tensor(action)
        t = len(self._tokens)  # index of the new frame
        start = self._starts[-1]
        if t - start + 1 > self.window:
            start = t - self.keep
            if self.cache:
                self._prefill(start)
        dyn = self.genie.dynamics
        if self.cache:
            cache = self._dyn_cache

            def logits_fn(tokens_BN):
                return dyn.frame_logits(tokens_BN[:, None], action_B[:, None], cache)[:, 0]
        else:
            context_BTN = torch.stack(self._tokens[start:], dim=1)
            frame_actions_BT = self._frame_actions(start, t, action_B)

            def logits_fn(tokens_BN):
                window_BTN = torch.cat([context_BTN, tokens_BN[:, None]], dim=1)
                return dyn.frame_logits(window_BTN, frame_actions_BT)[:, -1]

        new_BN = dyn.sample_frame(logits_fn, self.batch, self._tokens[0].shape[1], self.steps,
                                  self.temperature, self.greedy, self.generator, self._tokens[-1], self.keep_bias)
        self.actions.append(action if isinstance(action, int) else action_B.clone())
        return self._append(new_BN, action_B, start)

    def undo(self) -> None:
        """Drop the last frame and its action; at the prompt nothing happens."""
        if len(self._tokens) == 1:
            return
        for history in (self.frames, self.actions, self._tokens, self._action_ids):
            history.pop()
        popped_start = self._starts.pop()
        if not self.cache:
            return
        if popped_start == self._starts[-1]:
            frames = self._dyn_cache.frames - 1
            self._dyn_cache = self._dyn_cache.truncated(frames)
            self._dec_cache = self._dec_cache.truncated(frames)
        else:  # the dropped frame had restarted the window: rebuild the one before
            with torch.no_grad():
                self._prefill(self._starts[-1])

    # ------------------------------------------------------------------ internals

    def _append(self, tokens_BN: torch.Tensor, action_B: torch.Tensor | None, start: int) -> torch.Tensor:
        """Record a new frame made with window start `start`; decode it and extend the caches."""
        t = len(self._tokens)
        self._tokens.append(tokens_BN)
        if action_B is not None:
            self._action_ids.append(action_B)
        self._starts.append(start)
        tokenizer, dyn = self.genie.tokenizer, self.genie.dynamics
        if self.cache:
            # Only the prompt starts a window at itself; it has no leading action and no cache.
            first = start == t
            leading_B1 = self._frame_actions(t, t + 1) if first else action_B[:, None]
            self._dyn_cache = dyn.extend_cache(tokens_BN[:, None], leading_B1, None if first else self._dyn_cache)
            video_B1CHW, self._dec_cache = tokenizer.decode_frames(tokens_BN[:, None], None if first else self._dec_cache)
        else:
            video_B1CHW = tokenizer.decode(torch.stack(self._tokens[start:], dim=1))[:, -1:]
        frame_BCHW = self._shown(tokens_BN, video_B1CHW[:, 0])
        self.frames.append(frame_BCHW)
        return frame_BCHW

    def _shown(self, tokens_BN: torch.Tensor, decoded_BCHW: torch.Tensor) -> torch.Tensor:
        if self._detail_BCHW is None:
            return decoded_BCHW
        return with_prompt_detail(self.genie.tokenizer.grid, decoded_BCHW, tokens_BN, self._tokens[0], self._detail_BCHW)

    def _prefill(self, start: int) -> None:
        """Rebuild both caches over frames [start, now): the window restarts at `start`."""
        t = len(self._tokens)
        window_BTN = torch.stack(self._tokens[start:], dim=1)
        self._dyn_cache = self.genie.dynamics.extend_cache(window_BTN, self._frame_actions(start, t))
        self._dec_cache = self.genie.tokenizer.decode_frames(window_BTN)[1]

    def _frame_actions(self, start: int, end: int, last_B: torch.Tensor | None = None) -> torch.Tensor:
        """The action leading into each frame of the window [start, end) (+ a new frame under
        `last_B`), -> (B, T): the window's first frame has none, as in training."""
        past = [*self._action_ids[start : end - 1], *([] if last_B is None else [last_B])]
        past_BA = torch.stack(past, dim=1) if past else torch.zeros(self.batch, 0, dtype=torch.long, device=self.device)
        return self.genie.dynamics.frame_actions(past_BA, past_BA.shape[1] + 1)

    def _action_tensor(self, action: int | torch.Tensor) -> torch.Tensor:
        action_B = torch.as_tensor(action, dtype=torch.long, device=self.device)
        if action_B.ndim == 0:
            action_B = action_B.expand(self.batch)
        if action_B.shape != (self.batch,):
            raise ValueError(f"action must be an int or a ({self.batch},) tensor, got shape {tuple(action_B.shape)}")
        if action_B.min() < 0 or action_B.max() >= self.num_actions:
            raise ValueError(f"action ids must be in [0, {self.num_actions}), got {action_B.tolist()}")
        return action_B


def with_prompt_detail(grid, decoded_BCHW: torch.Tensor, tokens_BN: torch.Tensor, prompt_tokens_BN: torch.Tensor,
                       detail_BCHW: torch.Tensor) -> torch.Tensor:
    """The frame shown for `tokens_BN` (decoded as `decoded_BCHW`) under prompt detail: the
    prompt's lost detail `detail_BCHW` (prompt - decoded prompt) added on the patches of `grid`
    whose token is the prompt's (`prompt_tokens_BN`), clamped to [0, 1]."""
    same_B1HW = grid.spread((tokens_BN == prompt_tokens_BN).to(decoded_BCHW.dtype))
    return (decoded_BCHW + same_B1HW * detail_BCHW).clamp(0, 1)
