"""Frame sources: simple agents playing Atari (ale-py) and CoinRun (procgen), robot arms
moving to random targets (pybullet, CPU TinyRenderer), and the degradations that turn
gameplay into the low-quality footage a curation pipeline must reject.

Each source tells the action of its last step (`last_action`, an int of its `action_space`):
the true actions a corpus video's sidecar records (see generate.py).

Everything is deterministic from the seed given.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys

import numpy as np

ATARI_FPS = 60  # the console's frame rate; videos at 30 FPS show every second frame
ATARI_AUDIO_RATE = 512 * ATARI_FPS  # ale-py gives 512 unsigned 8-bit samples per frame
ATARI_ACTIONS = 18  # ALE's full action set; an agent's minimal set is a subset of its ids
COINRUN_ACTIONS = 15  # procgen's action combos
# An arm's true action: the direction it is commanded to move in, by its dominant axis
# (robot base frame), or "hold" within ARM_HOLD_M of the target
ARM_MOVES = ("hold", "+x", "-x", "+y", "-y", "+z", "-z")
ARM_HOLD_M = 0.03


def action_space(renderer: str, game: str) -> str:
    """"<sim>:<game>:<n>": which simulator's actions, ids 0 <= a < n (ALE games CamelCased
    as gymnasium names them, e.g. "ale:MontezumaRevenge:18")."""
    if renderer == "ale":
        return f"ale:{''.join(w.capitalize() for w in game.split('_'))}:{ATARI_ACTIONS}"
    if renderer == "procgen":
        return f"procgen:{game}:{COINRUN_ACTIONS}"
    if renderer == "pybullet":
        return f"pybullet:{game}:{len(ARM_MOVES)}"
    raise ValueError(f"no action space for renderer {renderer!r}")


def arm_move(delta) -> int:
    """The index in ARM_MOVES of a commanded displacement (x, y, z) in metres."""
    d = np.asarray(delta, np.float64)
    if float(np.linalg.norm(d)) < ARM_HOLD_M:
        return 0
    axis = int(np.argmax(np.abs(d)))
    return 1 + 2 * axis + int(d[axis] < 0)


def renderers_available() -> dict[str, bool]:
    """Which simulators can render here (procgen is optional: no Python 3.11 wheel upstream)."""
    out = {}
    for name, mod in (("ale", "ale_py"), ("pybullet", "pybullet"), ("procgen", "procgen")):
        try:
            ok = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            ok = False
        if ok and name == "procgen":
            ok = _procgen_works()
        out[name] = ok
    return out


def _procgen_works() -> bool:
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from procgen import ProcgenGym3Env  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return False


@contextlib.contextmanager
def quiet_fds():
    """Silence C-level prints on fds 1 and 2 (pybullet's build banner, ALE's greeting)."""
    import ctypes

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        try:
            ctypes.CDLL(None).fflush(None)
        except Exception:  # noqa: BLE001
            pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


_ALE_GREETED = False


def _new_ale():
    global _ALE_GREETED
    from ale_py import ALEInterface, LoggerMode

    ALEInterface.setLoggerMode(LoggerMode.Error)
    if _ALE_GREETED:
        return ALEInterface()
    with quiet_fds():
        ale = ALEInterface()
    _ALE_GREETED = True
    return ale


def _pybullet():
    if "pybullet" not in sys.modules:
        with quiet_fds():
            import pybullet  # noqa: F401
    import pybullet

    return pybullet


# ------------------------------------------------------------------------------- Atari
def _action_weights(actions) -> np.ndarray:
    w = []
    for a in actions:
        name = getattr(a, "name", str(a)).upper()
        x = 1.0
        if name == "NOOP":
            x = 0.3
        if "RIGHT" in name:
            x *= 4.0
        if "FIRE" in name or "UP" in name:  # jump (FIRE in most platformers, UP in some)
            x *= 2.0
        if "LEFT" in name:
            x *= 0.7
        if "DOWN" in name:  # ladders and ducking: some, not much
            x *= 0.5
        w.append(x)
    w = np.asarray(w)
    return w / w.sum()


class AtariAgent:
    """A random agent with sticky actions, biased to move right and jump, on an ALE game.

    `step()` advances one video frame (`frameskip` console frames, max-pooled over the last
    two against sprite flicker) and returns the 210x160 RGB screen; `audio` holds the
    console samples of that step as float32 at ATARI_AUDIO_RATE.
    """

    def __init__(self, game: str, seed: int, *, frameskip: int = 2, audio: bool = False,
                 warmup: int | None = None, mean_repeat: float = 6.0):
        from ale_py import roms

        self.ale = ale = _new_ale()
        ale.setInt("random_seed", int(seed) % (2**31 - 1))
        ale.setFloat("repeat_action_probability", 0.0)  # stickiness is ours (seeded below)
        ale.setBool("sound_obs", bool(audio))
        ale.loadROM(roms.get_rom_path(game))
        self.game = game
        self.rng = np.random.default_rng(seed)
        self.actions = list(ale.getMinimalActionSet())
        self.weights = _action_weights(self.actions)
        self.frameskip = frameskip
        self.audio_on = audio
        self.mean_repeat = mean_repeat
        self._left = 0
        self._a = self.actions[0]
        self.last_action = 0  # the ALE id of the action of the last step
        self.audio = np.zeros(0, np.float32)
        self.title_frame = ale.getScreenRGB().copy()
        n = int(self.rng.integers(0, 90)) if warmup is None else warmup
        for _ in range(n):
            self.step()

    def _act(self):
        if self._left <= 0:
            self._a = self.actions[self.rng.choice(len(self.actions), p=self.weights)]
            self._left = int(self.rng.geometric(1.0 / self.mean_repeat))
        self._left -= 1
        return self._a

    def step(self) -> np.ndarray:
        ale = self.ale
        a = self._act()
        self.last_action = a.value
        screens = []
        chunks = []
        for k in range(self.frameskip):
            ale.act(a)
            if k >= self.frameskip - 2:
                screens.append(ale.getScreenRGB())
            if self.audio_on:
                chunks.append(ale.getAudio())
            if ale.game_over():
                ale.reset_game()
        if self.audio_on:
            raw = np.concatenate(chunks).astype(np.float32)
            self.audio = (raw - 128.0) / 128.0 * 0.8
        return screens[0] if len(screens) == 1 else np.maximum(screens[0], screens[1])


# ------------------------------------------------------------------------------ CoinRun
class CoinRunAgent:
    """procgen CoinRun at 15 steps/s, rendered at 512x512; random actions biased right/jump."""

    # procgen's 15 action combos; index 7 = RIGHT, 8 = RIGHT+UP, 5 = UP, 2 = LEFT+UP
    _W = np.array([0.3, 0.5, 0.5, 0.3, 0.5, 2.0, 0.5, 5.0, 5.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])

    # a weak agent: always right and jump. On hard levels it dies (or, rarely, wins) every
    # 2-5 s, and procgen starts a new level each time: footage of frequent episode resets
    RUSH = np.eye(15)[8]

    def __init__(self, seed: int, level: int = 0, *, mode: str = "easy", weights: np.ndarray | None = None):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from procgen import ProcgenGym3Env
        self.env = ProcgenGym3Env(num=1, env_name="coinrun", start_level=int(level), num_levels=0,
                                  distribution_mode=mode, render_mode="rgb_array",
                                  rand_seed=int(seed) % (2**31 - 1))
        self.rng = np.random.default_rng(seed)
        w = self._W if weights is None else np.asarray(weights, float)
        self._p = w / w.sum()
        self._left = 0
        self._a = 7
        self.last_action = self._a

    def step(self) -> np.ndarray:
        if self._left <= 0:
            self._a = int(self.rng.choice(len(self._p), p=self._p))
            self._left = int(self.rng.geometric(1 / 4))
        self._left -= 1
        self.env.act(np.array([self._a]))
        self.last_action = self._a
        return np.asarray(self.env.get_info()[0]["rgb"], dtype=np.uint8)


# ------------------------------------------------------------------------------- robots
class ArmSim:
    """A Kuka iiwa, Franka Panda or UFactory xArm6 arm reaching random targets over a table of cubes."""

    def __init__(self, robot: str, seed: int, width: int = 320, height: int = 180):
        import pybullet_data

        p = _pybullet()

        self.p = p
        self.cid = p.connect(p.DIRECT)
        c = self.cid
        self.rng = rng = np.random.default_rng(seed)
        self.width, self.height = width, height
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=c)
        p.setGravity(0, 0, -9.8, physicsClientId=c)
        p.loadURDF("plane.urdf", physicsClientId=c)
        colors = [[0.9, 0.2, 0.2, 1], [0.2, 0.7, 0.2, 1], [0.2, 0.3, 0.9, 1], [0.9, 0.8, 0.1, 1]]
        self.cubes = []
        for col in colors[: int(rng.integers(2, 5))]:
            pos = [0.45 + rng.uniform(0, 0.25), rng.uniform(-0.25, 0.25), 0.03]
            b = p.loadURDF("cube_small.urdf", pos, physicsClientId=c)
            p.changeVisualShape(b, -1, rgbaColor=col, physicsClientId=c)
            self.cubes.append(b)
        if robot == "kuka":
            self.arm = p.loadURDF("kuka_iiwa/model.urdf", [0, 0, 0], useFixedBase=True, physicsClientId=c)
            self.ee = 6
            self.joints = list(range(7))
            self.fingers = []
        elif robot == "panda":
            self.arm = p.loadURDF("franka_panda/panda.urdf", [0, 0, 0], useFixedBase=True, physicsClientId=c)
            self.ee = 11
            self.joints = [0, 1, 2, 3, 4, 5, 6]
            self.fingers = [9, 10]
            rest = [0, -0.3, 0, -2.2, 0, 2.0, 0.8]
            for j, q in zip(self.joints, rest):
                p.resetJointState(self.arm, j, q, physicsClientId=c)
        elif robot == "xarm":
            self.arm = p.loadURDF("xarm/xarm6_robot.urdf", [0, 0, 0], useFixedBase=True, physicsClientId=c)
            self.ee = 6
            self.joints = [1, 2, 3, 4, 5, 6]
            self.fingers = []
        else:
            raise ValueError(robot)
        self.robot = robot
        yaw = float(rng.uniform(30, 70)) * (1 if rng.random() < 0.5 else -1)
        self.view = p.computeViewMatrixFromYawPitchRoll([0.45, 0, 0.15], 1.45, yaw, -28, 0, 2, physicsClientId=c)
        self.proj = p.computeProjectionMatrixFOV(55, width / height, 0.05, 10, physicsClientId=c)
        self._target = None
        self._t_left = 0
        self._grip = 0.04
        self.last_action = 0  # ARM_MOVES index of the last advance's command
        self.step_hz = 240
        p.setTimeStep(1 / self.step_hz, physicsClientId=c)

    def _new_target(self):
        r = self.rng
        if self.cubes and r.random() < 0.6:  # reach for a cube (pick), else somewhere above the table
            cube = self.cubes[int(r.integers(len(self.cubes)))]
            pos, _ = self.p.getBasePositionAndOrientation(cube, physicsClientId=self.cid)
            tgt = [pos[0], pos[1], pos[2] + r.uniform(0.02, 0.12)]
        else:
            tgt = [r.uniform(0.3, 0.75), r.uniform(-0.35, 0.35), r.uniform(0.1, 0.55)]
        self._target = tgt
        self._t_left = float(r.uniform(1.2, 2.8))
        self._grip = 0.04 if r.random() < 0.5 else 0.0

    def advance(self, seconds: float) -> np.ndarray:
        """Simulate `seconds`; return the commanded target (x, y, z, grip) as the action.
        `last_action` becomes the direction commanded (ARM_MOVES), from where the hand is."""
        p, c = self.p, self.cid
        if self._target is None or self._t_left <= 0:
            self._new_target()
        self._t_left -= seconds
        hand = p.getLinkState(self.arm, self.ee, physicsClientId=c)[4]
        self.last_action = arm_move(np.subtract(self._target, hand))
        down = p.getQuaternionFromEuler([math.pi, 0, 0])
        q = p.calculateInverseKinematics(self.arm, self.ee, self._target, down, maxNumIterations=30,
                                         physicsClientId=c)
        for j, qj in zip(self.joints, q):
            p.setJointMotorControl2(self.arm, j, p.POSITION_CONTROL, qj, force=300, maxVelocity=1.2,
                                    physicsClientId=c)
        for f in self.fingers:
            p.setJointMotorControl2(self.arm, f, p.POSITION_CONTROL, self._grip, force=40, physicsClientId=c)
        for _ in range(max(1, int(round(seconds * self.step_hz)))):
            p.stepSimulation(physicsClientId=c)
        return np.array([*self._target, self._grip], np.float32)

    def render(self) -> np.ndarray:
        p = self.p
        img = p.getCameraImage(self.width, self.height, self.view, self.proj, renderer=p.ER_TINY_RENDERER,
                               flags=p.ER_NO_SEGMENTATION_MASK, physicsClientId=self.cid)
        return np.reshape(np.asarray(img[2], dtype=np.uint8), (self.height, self.width, 4))[:, :, :3].copy()

    def close(self):
        try:
            self.p.disconnect(physicsClientId=self.cid)
        except Exception:  # noqa: BLE001
            pass


# -------------------------------------------------------------------------- degradations
def fit(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale to fit inside width x height, keep aspect, pad with black (like an upload)."""
    from .encode import resize_rgb

    h, w = rgb.shape[:2]
    s = min(width / w, height / h)
    nw, nh = max(2, int(round(w * s / 2)) * 2), max(2, int(round(h * s / 2)) * 2)
    small = resize_rgb(rgb, nw, nh)
    if (nw, nh) == (width, height):
        return small
    out = np.zeros((height, width, 3), np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def blur(rgb: np.ndarray, width: int, height: int, factor: int = 24) -> np.ndarray:
    from .encode import resize_rgb

    small = resize_rgb(rgb, max(4, width // factor), max(4, height // factor), "AREA")
    return resize_rgb(small, width, height, "BICUBIC")


def letterbox(rgb: np.ndarray, width: int, height: int, box_w: int, box_h: int) -> np.ndarray:
    out = np.zeros((height, width, 3), np.uint8)
    y, x = (height - box_h) // 2, (width - box_w) // 2
    out[y:y + box_h, x:x + box_w] = fit(rgb, box_w, box_h)
    return out


def darken(rgb: np.ndarray, rng: np.random.Generator, gain: float = 0.04, noise: int = 3) -> np.ndarray:
    x = rgb.astype(np.int16) * gain + rng.integers(0, noise + 1, rgb.shape[:2])[..., None]
    return np.clip(x, 0, 255).astype(np.uint8)


def add_noise(rgb: np.ndarray, rng: np.random.Generator, amp: int = 2) -> np.ndarray:
    x = rgb.astype(np.int16) + rng.integers(-amp, amp + 1, rgb.shape, dtype=np.int16)
    return np.clip(x, 0, 255).astype(np.uint8)


class Webcam:
    """A face-cam box in a corner: a face-like blob that bobs, turns and talks."""

    def __init__(self, rng: np.random.Generator, w: int, h: int):
        self.w, self.h = w, h
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.yy, self.xx = yy, xx
        # a room behind the streamer: vertical gradient + a shelf
        wall = np.array(rng.uniform(60, 140, 3), np.float32)
        bg = wall[None, None, :] * (0.7 + 0.3 * yy[..., None] / h)
        bg[int(h * 0.25):int(h * 0.29), :, :] = wall * 0.5
        self.bg = bg
        self.skin = np.array([rng.uniform(170, 235), rng.uniform(120, 180), rng.uniform(90, 140)], np.float32)
        self.hair = np.array(rng.uniform(20, 90, 3), np.float32)
        self.shirt = np.array(rng.uniform(30, 220, 3), np.float32)
        self.phase = float(rng.uniform(0, 6.28))

    def patch(self, t: float) -> np.ndarray:
        w, h, yy, xx = self.w, self.h, self.yy, self.xx
        cx = w * 0.5 + w * 0.08 * math.sin(0.7 * t + self.phase)
        cy = h * 0.48 + h * 0.04 * math.sin(1.9 * t)
        rx, ry = w * 0.22, h * 0.3
        img = self.bg.copy()
        body = ((xx - cx) / (w * 0.45)) ** 2 + ((yy - (h * 1.05)) / (h * 0.35)) ** 2 < 1
        img[body] = self.shirt
        hair = ((xx - cx) / (rx * 1.12)) ** 2 + ((yy - cy + ry * 0.12) / (ry * 1.1)) ** 2 < 1
        img[hair] = self.hair
        face = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        img[face] = self.skin
        look = 0.25 * math.sin(0.5 * t)
        for sx in (-0.4, 0.4):
            ex, ey = cx + rx * (sx + look * 0.3), cy - ry * 0.15
            eye = ((xx - ex) / (rx * 0.14)) ** 2 + ((yy - ey) / (ry * 0.07)) ** 2 < 1
            img[eye] = (30, 30, 30)
        mouth_open = 0.04 + 0.06 * abs(math.sin(7.0 * t))
        mouth = ((xx - cx) / (rx * 0.35)) ** 2 + ((yy - (cy + ry * 0.45)) / (ry * mouth_open)) ** 2 < 1
        img[mouth] = (90, 20, 30)
        return img.astype(np.uint8)


def overlay_corner(frame: np.ndarray, patch: np.ndarray, corner: str = "br", margin: int = 8) -> np.ndarray:
    out = frame.copy()
    ph, pw = patch.shape[:2]
    H, W = frame.shape[:2]
    y = H - ph - margin if corner[0] == "b" else margin
    x = W - pw - margin if corner[1] == "r" else margin
    out[y - 3:y + ph + 3, x - 3:x + pw + 3] = (240, 240, 240)  # the frame round the cam
    out[y:y + ph, x:x + pw] = patch
    return out
