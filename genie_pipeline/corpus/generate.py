"""Generate the embedded sample corpus: real simulator footage encoded like uploads.

    python -m genie_pipeline.corpus.generate --out DIR [--seed N] [--size small|full|quality]

`quality` is a corpus for measuring the quality classifier rather than the ingest: for each
of 30 Atari games (and CoinRun where procgen imports) 3 clean and 5 degraded 33 s videos, for
each of 3 robot arms (Kuka, Panda, xArm6) 2 clean and 6 degraded, the 12 degradations of
degrade.py taken in turn: 272 videos, each 2 labelled 16 s clips on the grid after ingest
(437 in all when clips were split at cuts: the shot cutter dropped most slideshow, rapid-cut
and fade videos; on the grid the heuristics reject most of their clips), so a benchmark can
hold out whole games (a classifier that learned which games look "bad" fails that test). Its
videos are 160x90 at 15 FPS (the ingest keeps 160x90 at 10 FPS) and have no actions sidecar.

Layout of the output directory::

    catalog.jsonl        one JSON object per video (schema below)
    corpus.json          seed, size, code version, which renderers were available, timings
    videos/gc0001.mp4 …  the files (h264 yuv420p mp4, plus degraded and broken ones)
    videos/gc0001.actions.json …  true actions of the videos an agent played (below)
    lerobot/             a LeRobot v3.0 dataset of robot-arm episodes (see lerobot.py)

Catalog row (every key always present; `null` where it does not apply)::

    id              "gc0001"  ([a-z0-9], safe as a file name and a clip key)
    title, description   what a video site would show (some titles are hostile on purpose)
    duration        seconds (float), the probed duration of the video stream; for broken
                    files what the upload claims
    file            "videos/gc0001.mp4" relative to the corpus dir, or null (error routes)
    url             null, or a server-relative override ("/status/404", "/flaky/2/videos/…")
                    that `serve.py`'s /search returns instead of /videos/<file>
    kind            game | robot | broken
    game            pitfall, montezuma_revenge, …, coinrun, kuka, panda, mixed, or null
    quality_label   good | bad | null (broken)  — reference labels for the quality classifier
    made_how        clean | static_menu | webcam_overlay | slideshow | blur | black | letterbox |
                    rapid_cuts | montage | level_change | flip_screen | resets | truncated |
                    zero_byte | not_video | no_moov | random_bytes | garbage_packets |
                    too_short | audio_only | http_404 | http_500
    expect_keyword  keep | reject  — verdict of the default keyword filter on the title
    keyword_set     "default" or "robot" (robot sources use their own terms)
    expect_failure  null or the reason: truncated | empty_file | not_a_video | no_moov |
                    undecodable | too_short | no_video_stream | http_404 | http_500
    width, height   coded size of the video stream (null when there is none)
    fps             frame rate (average for the variable-frame-rate file)
    frames          number of video frames written (null when not a video)
    rotation        display-matrix rotation in degrees (counter-clockwise, as PyAV reads it)
    vfr             true for the variable-frame-rate file
    has_audio       the file has an audio stream
    renderer        ale | procgen | pybullet | synthetic | null
    seed            the seed this video was rendered from
    bytes, sha256   of the file (null when there is none)
    actions         "videos/gc0001.actions.json" (relative to the corpus dir), or null

Actions sidecar: `{"fps": 30, "action_space": "ale:Pitfall:18", "actions": [a_0, …]}`, one int
per video frame: a_i is the action of the first simulator step after frame i (the step that
makes the next picture; its id in `action_space`, "<sim>:<game>:<n>" with 0 <= a < n; see
render.action_space). Written for every video whose frames are one agent's consecutive steps
at a constant frame rate: clean Atari, CoinRun and robot videos, the degradations that keep
the frames 1:1 (webcam overlay, blur, black, letterbox) and the too-short file. Not for
montages (slideshow, rapid cuts: several agents, held stills), the title screen left running
(nobody acts), the variable-frame-rate file (one fps cannot place its frames) or the broken
files.

The same seed gives the same catalog and byte-identical files (one x264 thread per file).

Footage whose picture jumps (full corpus; CUT_FOOTAGE says what ingest must make of it, written
down before the montage rule was tuned): `level_change` (32 s of Pitfall II, 1 s of black, a
later part of the game), `flip_screen` (60 s of Private Eye at 10 FPS: the car drives from one
screen to the next and back), `resets` (32 s of CoinRun on hard levels by an agent that rushes
right and jumps: it dies every 2-5 s and procgen starts a new level each time; needs procgen)
and `montage` (32 s of four Atari games cut every 1-3 s, each going on where it left off).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

CORPUS_FORMAT = 2  # bump when the catalog schema changes
CLIP_SECONDS = 16

ATARI_TITLES = {
    "pitfall": "Pitfall!",
    "pitfall2": "Pitfall II: Lost Caverns",
    "montezuma_revenge": "Montezuma's Revenge",
    "kangaroo": "Kangaroo",
    "mario_bros": "Mario Bros.",
    "hero": "H.E.R.O.",
    "keystone_kapers": "Keystone Kapers",
    "private_eye": "Private Eye",
    "frostbite": "Frostbite",
}

# The default keyword terms; the verdict below is an independent, simpler oracle for the
# pipeline's filter (tests compare the two): an include term AND a require term, no exclude.
from genie_pipeline.filtering.config import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, DEFAULT_REQUIRE  # noqa: E402


def _has_term(text: str, term: str) -> bool:
    import re

    return re.search(r"(?<![a-z0-9])" + re.escape(term.lower()) + r"(?![a-z0-9])", text) is not None


def keyword_verdict(title: str, include=DEFAULT_INCLUDE, require=DEFAULT_REQUIRE, exclude=DEFAULT_EXCLUDE) -> str:
    t = title.lower()
    if any(_has_term(t, x) for x in exclude):
        return "reject"
    if any(_has_term(t, x) for x in include) and any(_has_term(t, x) for x in require):
        return "keep"
    return "reject"


# --------------------------------------------------------------------------------- plan
def _spec(made_how, title, duration, *, game=None, kind="game", quality="good", width=640, height=360,
          fps=30, audio=False, rotation=0, vfr=False, url=None, description=None, keyword_set="default",
          failure=None, renderer="ale", **extra):
    d = dict(made_how=made_how, title=title, duration=float(duration), game=game, kind=kind,
             quality_label=quality, width=width, height=height, fps=fps, audio=audio,
             rotation=rotation, vfr=vfr, url=url, description=description, keyword_set=keyword_set,
             expect_failure=failure, renderer=renderer)
    d.update(extra)
    return d


LONG_TITLE = "Pitfall II: Lost Caverns gameplay part 1 " + " ".join(
    ["#pitfall #atari2600 #retrogaming #speedrun #longplay #nostalgia"] * 170)
CONTROL_TITLE = "Mario Bros.\x00 Atari 2600\x1b[2J longplay\r\nplayer 2\t\x07\x7f"
SCRIPT_TITLE = "<script>alert(1)</script> Kangaroo Walkthrough (Atari 2600)"
PATH_TITLE = "../../etc/passwd Pitfall speedrun"

# The VFR pattern: (fps, seconds) segments, repeated; ends on 30 FPS.
VFR_PATTERN = [(15, 2.0), (20, 2.0), (30, 2.0)]


SIZES = ("small", "full", "quality")

# made_how → (clips on the 16 s grid, clips kept by the heuristics, reason of the rejected ones):
# gameplay whose picture jumps keeps every grid clip, its cuts recorded; a montage keeps none
CUT_FOOTAGE = {"level_change": (2, 2, None), "flip_screen": (3, 3, None), "resets": (2, 2, None),
               "montage": (2, 0, "cuts")}

# Games of the `quality` corpus: the nine of the sample corpus and 21 more, different in look
# (very dark games such as Centipede and Gravitar left out: their clean footage reads as "black").
QUALITY_GAMES = list(ATARI_TITLES) + [
    "alien", "amidar", "asterix", "berzerk", "boxing", "breakout", "chopper_command", "demon_attack", "freeway",
    "gopher", "jamesbond", "ms_pacman", "qbert", "riverraid", "road_runner", "seaquest", "space_invaders",
    "venture", "krull", "tutankham", "kung_fu_master"]
DEGRADATIONS = ("static_menu", "webcam_overlay", "slideshow", "blur", "black", "letterbox", "rapid_cuts")

# The quality corpus: every game (30 Atari + CoinRun when procgen imports) and robot setup gets
# clean videos and degraded ones, the degradations of degrade.KINDS taken in turn. 33 s videos
# at 15 FPS, 160x90 (the size the ingest keeps and the classifier sees): two 16 s clips each
# after ingest, at a tenth of the rendering cost of 640x360 at 30 FPS.
QUALITY_SECONDS, QUALITY_FPS, QUALITY_W, QUALITY_H = 33, 15, 160, 90
QUALITY_CLEAN, QUALITY_DEGRADED = 3, 5  # videos per game
ROBOT_CLEAN, ROBOT_DEGRADED = 2, 6  # videos per robot setup (an arm renders ~10x slower than a game)
ROBOT_TITLES = {"kuka": "KUKA iiwa", "panda": "Franka Panda", "xarm": "UFactory xArm6"}


def quality_plan(procgen: bool = False) -> list[dict]:
    """Per game / robot setup: clean videos and degraded ones, the degradations of
    degrade.KINDS taken in turn across all of them (each used on many sources, platformers
    and robots alike). Montages (slideshow, rapid cuts) mix the source with the next three of
    its family (games with games, arms with arms)."""
    from .degrade import KINDS, MONTAGES, ROBOTS

    S = []
    games = QUALITY_GAMES + (["coinrun"] if procgen else [])
    turn = 0
    for family, members, n_clean, n_bad in (("game", games, QUALITY_CLEAN, QUALITY_DEGRADED),
                                            ("robot", list(ROBOTS), ROBOT_CLEAN, ROBOT_DEGRADED)):
        for i, g in enumerate(members):
            if family == "robot":
                name, what = ROBOT_TITLES[g], "robot arm episode"
                common = dict(kind="robot", keyword_set="robot", renderer="pybullet")
            else:
                name = "CoinRun" if g == "coinrun" else ATARI_TITLES.get(g, g.replace("_", " ").title())
                what = "(procgen) gameplay" if g == "coinrun" else "(Atari 2600) gameplay"
                common = dict(renderer="procgen" if g == "coinrun" else "ale")
            common.update(duration=QUALITY_SECONDS, game=g, degrade=True, width=QUALITY_W, height=QUALITY_H, fps=QUALITY_FPS)
            for k in range(n_clean):
                S.append(_spec("clean", f"{name} {what} part {k + 1}", **common))
            for _ in range(n_bad):
                how = KINDS[turn % len(KINDS)]
                turn += 1
                extra = {"games": [members[(i + j) % len(members)] for j in range(min(4, len(members)))]} \
                    if how in MONTAGES else {}
                S.append(_spec(how, f"{name} {what} - {how.replace('_', ' ')}", quality="bad", **common, **extra))
    return S


def plan(size: str = "full", procgen: bool = False) -> list[dict]:
    """The list of videos for `size`; ids follow the order (CoinRun last: it is optional)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    if size == "quality":
        return _finish_plan(quality_plan(procgen))
    small = size == "small"
    S = []
    # -- clean gameplay, several formats
    S.append(_spec("clean", "Pitfall! (Atari 2600) Any% Speedrun in 4:32", 30 if small else 45, game="pitfall",
                   audio=True, description="Pitfall Harry runs through the jungle. Atari 2600, from the console."))
    S.append(_spec("clean", "Montezuma's Revenge - Full Playthrough (No Commentary)", 24 if small else 40,
                   game="montezuma_revenge", width=480, height=360, audio=True, url="/flaky/2/videos/{file}",
                   description="Panama Joe explores the pyramid. 4:3 capture of the Atari 2600 version."))
    S.append(_spec("clean", SCRIPT_TITLE, 20 if small else 30, game="kangaroo", width=360, height=640, rotation=90,
                   description="Mother kangaroo climbs to rescue her joey. Filmed on my phone."))
    S.append(_spec("clean", CONTROL_TITLE, 18, game="mario_bros", vfr=True, fps=None,
                   description="Mario and Luigi in the sewers. Screen capture with a variable frame rate."))
    S.append(_spec("clean", "Kuka arm pick and place episode 3", 20 if small else 30, game="kuka", kind="robot",
                   keyword_set="robot", renderer="pybullet",
                   description="KUKA iiwa reaching for cubes on a table; simulated, pybullet."))
    # -- degraded
    S.append(_spec("static_menu", LONG_TITLE, 20, game="pitfall2", quality="bad",
                   description="Title screen left running while I was away."))
    S.append(_spec("webcam_overlay", "Montezuma's Revenge let's play with facecam", 20, game="montezuma_revenge",
                   quality="bad", audio=True, description="My first time playing it, facecam in the corner."))
    S.append(_spec("rapid_cuts", PATH_TITLE, 18, game="mixed", quality="bad",
                   games=["pitfall", "mario_bros", "kangaroo", "montezuma_revenge"],
                   description="Best moments, fast edit."))
    S.append(_spec("slideshow", "Unboxing my Atari 2600 collection", 18, game="mixed", quality="bad",
                   games=["pitfall", "kangaroo", "mario_bros", "pitfall2", "montezuma_revenge"],
                   description="Screenshots of every cartridge I own."))
    S.append(_spec("clean", "Kangaroo review", 17, game="kangaroo",
                   description="Is Kangaroo for the Atari 2600 still worth playing? Gameplay footage."))
    if not small:
        S += [
            _spec("clean", "Pitfall! Atari 2600 - World Record Run (720p)", 30, game="pitfall", width=1280, height=720,
                  audio=True, description="A 720p capture of a Pitfall run."),
            _spec("clean", "Pitfall II: Lost Caverns - Longplay", 40, game="pitfall2", audio=True,
                  description="Complete longplay of the Atari 2600 sequel."),
            _spec("clean", "H.E.R.O. (Atari 2600) retro gameplay", 35, game="hero", audio=True,
                  description="Roderick Hero flies down the mine shaft."),
            _spec("clean", "Keystone Kapers - retro Atari 2600 gameplay", 30, game="keystone_kapers",
                  description="Officer Keystone Kelly chases Harry Hooligan through the store."),
            _spec("clean", "Private Eye - Atari 2600 retro longplay", 30, game="private_eye", audio=True,
                  description="Pierre Touché drives around town looking for clues."),
            _spec("clean", "Mario Bros. (Atari 2600) gameplay - phases 1 to 5", 40, game="mario_bros", audio=True,
                  description="Clearing the pipes of shellcreepers."),
            _spec("clean", "Montezuma's Revenge speedrun attempt #12", 30, game="montezuma_revenge",
                  description="Trying a new route through the first rooms."),
            _spec("clean", "Frostbite retro speedrun - world record pace", 30, game="frostbite",
                  description="Frostbite Bailey builds igloos; Atari 2600."),
            _spec("clean", "Super Mario Bros. The Movie - Official Trailer", 20, game="mario_bros",
                  description="Not really the trailer, just gameplay."),
            _spec("clean", "Franka Panda reaching random targets - episode 7", 30, game="panda", kind="robot",
                  keyword_set="robot", renderer="pybullet", description="Franka Emika Panda arm, pybullet."),
            _spec("blur", "Kangaroo Atari 2600 gameplay (old camcorder)", 24, game="kangaroo", quality="bad",
                  description="Recorded off a CRT with my dad's camcorder, sorry about the focus."),
            _spec("black", "Montezuma's Revenge longplay (capture card not working)", 22, game="montezuma_revenge",
                  quality="bad", audio=True, description="The capture card died, audio only."),
            _spec("letterbox", "Mario Bros retro gameplay [SD]", 24, game="mario_bros", quality="bad",
                  description="Old recording, small window."),
            _spec("letterbox", "Pitfall! speedrun (mobile recording)", 20, game="pitfall", quality="bad",
                  description="Recorded the emulator window on my phone."),
            _spec("webcam_overlay", "Pitfall Movie Trailer Reaction", 24, game="pitfall", quality="bad", audio=True,
                  description="Reacting to the Pitfall movie trailer."),
            _spec("static_menu", "Keystone Kapers - let's play part 3", 22, game="keystone_kapers", quality="bad",
                  description="Paused on the menu the whole time."),
            _spec("slideshow", "Pitfall 2 walkthrough screenshots", 24, game="mixed", quality="bad",
                  games=["pitfall2", "pitfall", "hero"], description="Step by step screenshots."),
            _spec("rapid_cuts", "Top Atari 2600 platformers gameplay montage", 20, game="mixed", quality="bad",
                  games=["pitfall2", "hero", "frostbite", "private_eye", "keystone_kapers"],
                  description="Fast montage of my favourite platformers."),
            _spec("blur", "H.E.R.O. retro longplay part 2 (out of focus)", 20, game="hero", quality="bad",
                  description="Autofocus gave up halfway through."),
        ]
    # -- broken and awkward files (valid short ones included)
    B = dict(kind="broken", quality=None)
    S += [
        _spec("truncated", "Pitfall speedrun attempt (upload interrupted)", 16, game="pitfall", failure="truncated",
              description="Upload cut off halfway.", **B),
        _spec("zero_byte", "Montezuma's Revenge speedrun 100%", 0, game="montezuma_revenge", failure="empty_file",
              renderer="synthetic", description="Empty file.", **B),
        _spec("not_video", "Mario Bros gameplay (mirror)", 0, game="mario_bros", failure="not_a_video",
              renderer="synthetic", description="The mirror serves an HTML error page.", **B),
        _spec("no_moov", "Kangaroo Atari longplay part 2", 10, game="kangaroo", failure="no_moov",
              description="Recording stopped before the file was finalised.", **B),
        _spec("random_bytes", "Pitfall 2 walkthrough (re-upload)", 0, game="pitfall2", failure="undecodable",
              renderer="synthetic", description="Random bytes with an .mp4 name.", **B),
        _spec("garbage_packets", "Retro platformer gameplay mix", 10, game="mario_bros", failure="undecodable",
              description="Valid container, corrupt media data.", **B),
        _spec("too_short", "Pitfall! speedrun - first screen only", 8, game="pitfall", failure="too_short",
              description="A valid 8 s video: shorter than one 16 s clip.", **B),
        _spec("audio_only", "Pitfall! gameplay audio only", 12, game="pitfall", failure="no_video_stream",
              renderer="synthetic", description="An mp4 with a sine wave and no video.", **B),
        _spec("http_404", "Montezuma's Revenge world record speedrun (deleted)", 95, game="montezuma_revenge",
              failure="http_404", url="/status/404", renderer=None, description="This video has been removed.", **B),
        _spec("http_500", "Mario Bros longplay (server error)", 120, game="mario_bros", failure="http_500",
              url="/status/500", renderer=None, description="The server always fails on this one.", **B),
    ]
    if not small:
        # footage whose picture jumps (expected outcome written before any tuning, see
        # CUT_FOOTAGE): a level change through black, a flip-screen game, a montage
        S += [
            _spec("level_change", "Pitfall II: Lost Caverns - longplay, into the caverns", 32, game="pitfall2",
                  description="The next part of the caverns after a black screen."),
            _spec("flip_screen", "Private Eye - Atari 2600 retro longplay, driving round town", 60, game="private_eye",
                  fps=10, agent_seed=1, description="Pierre drives from screen to screen."),
            _spec("montage", "Atari 2600 platformer highlights gameplay mix", 32, game="mixed", quality="bad",
                  games=["pitfall", "mario_bros", "kangaroo", "hero"],
                  description="Quick cuts between my favourite platformer runs."),
        ]
    if procgen:
        S.append(_spec("clean", "CoinRun procgen gameplay - level 12", 20 if small else 30, game="coinrun",
                       renderer="procgen", description="Procgen CoinRun, random agent that likes to run right."))
        if not small:
            S.append(_spec("clean", "CoinRun speedrun (procgen, easy mode)", 25, game="coinrun", renderer="procgen",
                           description="Procgen CoinRun, another level."))
            S.append(_spec("resets", "CoinRun hard mode gameplay - rushing right, dying a lot", 32, game="coinrun",
                           renderer="procgen", description="Procgen CoinRun, hard levels, a new one at every death."))
    return _finish_plan(S)


def _finish_plan(S: list[dict]) -> list[dict]:
    for i, s in enumerate(S, 1):
        s["id"] = f"gc{i:04d}"
        if s["kind"] == "robot":
            s["renderer"] = "pybullet"
        s["expect_keyword"] = keyword_verdict(s["title"])
        if s["made_how"] in ("http_404", "http_500"):
            s["file"] = None
        else:
            s["file"] = f"videos/{s['id']}.mp4"
        if s["url"] and "{file}" in s["url"]:
            s["url"] = s["url"].replace("{file}", s["id"] + ".mp4")
        if s["vfr"]:
            reps = int(round(s["duration"] / sum(t for _, t in VFR_PATTERN)))
            s["vfr_segments"] = VFR_PATTERN * reps
    return S


# ------------------------------------------------------------------------------- render
def _atari_frames(game, seed, n, audio=False, frameskip=2, taken: list | None = None):
    """n frames (and their audio) of an agent playing `game`. `taken` receives the action of
    each frame's step and, once the n frames are consumed, of one more (unrendered) step."""
    from .render import AtariAgent

    ag = AtariAgent(game, seed, audio=audio, frameskip=frameskip)
    for _ in range(n):
        fr = ag.step()
        if taken is not None:
            taken.append(ag.last_action)
        yield fr, (ag.audio if audio else None)
    if taken is not None:
        ag.step()
        taken.append(ag.last_action)


def _after(taken: list[int | None]) -> list[int]:
    """Per frame, the action of the first step after it. `taken` holds, per frame, the action
    of the step that made it (None: the frame holds the previous picture), then the action of
    the step after the last frame."""
    out, nxt = [], taken[-1]
    for a in reversed(taken[:-1]):
        out.append(nxt)
        if a is not None:
            nxt = a
    return out[::-1]


def _render_video(spec: dict, path: Path) -> list[int] | None:
    """Render `spec` to `path`; the true action after each frame (see the module docstring),
    or None for a video no single agent played."""
    from . import render as R
    from .encode import VideoWriter

    seed = spec["seed"]
    W, H = spec["width"], spec["height"]
    fps = spec["fps"] or 30
    n = int(round(spec["duration"] * fps))
    how = spec["made_how"]
    rng = np.random.default_rng(seed + 1)
    faststart = how == "truncated"
    taken: list[int | None] = []

    if spec["vfr"]:
        tb = Fraction(1, 600)
        ag = R.AtariAgent(spec["game"], seed)
        with VideoWriter(path, W, H, 30, time_base=tb) as w:
            t = 0
            for f, secs in spec["vfr_segments"]:
                ag.frameskip = 60 // f
                ticks = 600 // f
                for _ in range(int(round(secs * f))):
                    w.write(ag.step(), pts=t)
                    t += ticks
        return None

    disp_w, disp_h = (H, W) if spec["rotation"] in (90, 270) else (W, H)

    from .encode import resize_rgb

    def out(frame):  # compose at display size; rotate into the coded orientation
        if spec["rotation"] in (90, 270):
            frame = np.rot90(resize_rgb(frame, disp_w, disp_h), k=-1 if spec["rotation"] == 90 else 1)
        return frame

    with VideoWriter(path, W, H, fps, rotation=spec["rotation"], audio=spec["audio"], faststart=faststart) as w:
        def emit(frame, audio=None, rate=R.ATARI_AUDIO_RATE):
            w.write(out(frame))
            if audio is not None:
                w.write_audio(audio, rate)

        if spec["kind"] == "robot":
            arm = R.ArmSim(spec["game"], seed, width=320, height=180)
            every = 3  # render at 10 FPS, hold each render for 3 frames
            img = None
            for i in range(n):
                arm.advance(1 / fps)
                taken.append(arm.last_action)
                if i % every == 0:
                    img = arm.render()
                emit(img)
            arm.advance(1 / fps)
            taken.append(arm.last_action)
            arm.close()
        elif spec["game"] == "coinrun":
            hard = dict(mode="hard", weights=R.CoinRunAgent.RUSH) if how == "resets" else {}
            ag = R.CoinRunAgent(seed, level=int(rng.integers(0, 10_000)), **hard)
            img = None
            for i in range(n):
                if i % 2 == 0:  # procgen runs at 15 steps/s
                    img = R.fit(ag.step(), disp_w, disp_h)
                taken.append(ag.last_action if i % 2 == 0 else None)
                emit(img)
            ag.step()
            taken.append(ag.last_action)
        elif how in ("clean", "truncated", "no_moov", "garbage_packets", "too_short"):
            for fr, au in _atari_frames(spec["game"], seed, n, audio=spec["audio"], taken=taken):
                emit(fr, au)
        elif how == "static_menu":
            ag = R.AtariAgent(spec["game"], seed, warmup=0)
            still = ag.title_frame
            for _ in range(n):
                emit(R.add_noise(still, rng, 1))
        elif how == "webcam_overlay":
            pw, ph = int(disp_w * 0.42) // 2 * 2, int(disp_h * 0.56) // 2 * 2
            cam = R.Webcam(rng, pw, ph)
            corner = ["br", "bl", "tr"][int(rng.integers(0, 3))]
            for i, (fr, au) in enumerate(_atari_frames(spec["game"], seed, n, audio=spec["audio"], taken=taken)):
                big = resize_rgb(fr, disp_w, disp_h)
                emit(R.overlay_corner(big, cam.patch(i / fps), corner), au)
        elif how == "blur":
            for fr, au in _atari_frames(spec["game"], seed, n, audio=spec["audio"], taken=taken):
                emit(R.blur(fr, disp_w, disp_h), au)
        elif how == "black":
            for fr, au in _atari_frames(spec["game"], seed, n, audio=spec["audio"], taken=taken):
                emit(R.darken(fr, rng), au)
        elif how == "letterbox":
            bw, bh = int(disp_w * 0.25) // 2 * 2, int(disp_h * 0.3) // 2 * 2
            for fr, au in _atari_frames(spec["game"], seed, n, audio=spec["audio"], taken=taken):
                emit(R.letterbox(fr, disp_w, disp_h, bw, bh), au)
        elif how == "level_change":  # one level, 1 s of black, a later one of the same game
            half = (n - fps) // 2
            for fr, au in _atari_frames(spec["game"], seed, half, taken=taken):
                emit(fr, au)
            black = np.zeros_like(fr)
            for _ in range(fps):
                taken.append(None)
                emit(black)
            for fr, au in _atari_frames(spec["game"], seed + 1, n - half - fps, taken=taken):
                emit(fr, au)
            return None  # two agents: no one action stream
        elif how == "flip_screen":  # an agent that drives between screens (cuts in the game itself)
            ag = R.AtariAgent(spec["game"], spec["agent_seed"])
            for _ in range(n):
                emit(ag.step())
                taken.append(ag.last_action)
            ag.step()
            taken.append(ag.last_action)
        elif how == "montage":  # several games, a cut every 1-3 s, each game going on where it left off
            agents = [R.AtariAgent(g, seed + k) for k, g in enumerate(spec["games"])]
            cur, left = 0, 0
            for _ in range(n):
                if left <= 0:
                    cur = (cur + 1 + int(rng.integers(0, len(agents) - 1))) % len(agents)
                    left = int(rng.integers(fps, 3 * fps + 1))
                left -= 1
                emit(agents[cur].step())
        elif how == "rapid_cuts":
            games = spec["games"]
            agents = [R.AtariAgent(g, seed + k) for k, g in enumerate(games)]
            cur, left = 0, 0
            for _ in range(n):
                if left <= 0:
                    cur = (cur + 1 + int(rng.integers(0, len(agents) - 1))) % len(agents)
                    left = int(rng.integers(7, 12))  # ~0.3 s
                left -= 1
                emit(agents[cur].step())
        elif how == "slideshow":
            games = spec["games"]
            agents = [R.AtariAgent(g, seed + k) for k, g in enumerate(games)]
            i, k = 0, 0
            while i < n:
                ag = agents[k % len(agents)]
                k += 1
                for _ in range(int(rng.integers(40, 200))):
                    still = ag.step()
                hold = min(n - i, int(rng.integers(75, 106)))  # 2.5-3.5 s
                big = resize_rgb(still, disp_w, disp_h)
                for _ in range(hold):
                    emit(big)
                i += hold
        else:
            raise ValueError(f"no renderer for {how!r}")
    return _after(taken) if taken else None


def _write_actions(out: Path, spec: dict, actions: list[int]) -> str:
    """The video's actions sidecar (module docstring); its path relative to the corpus dir."""
    from .render import action_space

    rel = f"videos/{spec['id']}.actions.json"
    doc = {"fps": spec["fps"], "action_space": action_space(spec["renderer"], spec["game"]), "actions": actions}
    (out / rel).write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return rel


def _render_one(spec: dict, out_dir: str) -> dict:
    """Worker: write one catalog file; returns what the catalog records about it."""
    from . import encode as E

    t0 = time.perf_counter()
    out = Path(out_dir)
    how = spec["made_how"]
    res = {"id": spec["id"]}
    if spec["file"] is None:
        res["seconds"] = 0.0
        return res
    path = out / spec["file"]
    tmp_dir = out / "_tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec["seed"])
    if how == "zero_byte":
        path.write_bytes(b"")
    elif how == "not_video":
        path.write_text("<!DOCTYPE html>\n<html><head><title>Error 503</title></head>\n"
                        "<body><h1>Video unavailable</h1><p>This mirror is over quota. Try again later.</p>"
                        "</body></html>\n")
    elif how == "random_bytes":
        path.write_bytes(rng.integers(0, 256, 150_000, dtype=np.uint8).tobytes())
    elif how == "audio_only":
        E.write_audio_only(path, spec["duration"])
    elif how in ("truncated", "no_moov", "garbage_packets"):
        src = tmp_dir / (spec["id"] + ".src.mp4")
        _render_video(spec, src)
        res["probe"] = E.probe(src)
        if how == "truncated":
            E.truncate(src, path, 0.45)
        elif how == "no_moov":
            E.strip_moov(src, path)
        else:
            E.garble_mdat(src, path, spec["seed"])
        src.unlink()
    elif spec.get("degrade"):  # the quality corpus: any source through any degradation, no actions
        from .degrade import render

        render(spec, path)
        res["probe"] = E.probe(path)
    else:
        actions = _render_video(spec, path)
        res["probe"] = E.probe(path)
        if actions is not None:
            res["actions"], res["n_actions"] = _write_actions(out, spec, actions), len(actions)
    res["bytes"] = path.stat().st_size
    res["sha256"] = E.sha256_file(path)
    res["seconds"] = time.perf_counter() - t0
    return res


def _cost(spec) -> float:
    if spec["file"] is None:
        return 0
    px = (spec["width"] or 640) * (spec["height"] or 360) / (640 * 360)
    c = spec["duration"] * (0.6 + px)
    if spec["kind"] == "robot":
        c *= 3.5
    if spec["made_how"] in ("webcam_overlay", "slideshow", "rapid_cuts", "blur", "letterbox", "montage"):
        c *= 1.6
    return c


def _row(spec: dict, res: dict) -> dict:
    pr = res.get("probe") or {}
    no_video = ("zero_byte", "not_video", "random_bytes", "audio_only", "http_404", "http_500")
    has_video_file = spec["made_how"] not in no_video
    vfr = bool(spec["vfr"])
    if has_video_file:
        frames = pr.get("frames")
        if vfr:
            fps = round(frames / spec["duration"], 3)
        else:
            fps = float(spec["fps"])
        width, height = pr.get("width"), pr.get("height")
    else:
        frames = fps = width = height = None
    return {
        "id": spec["id"],
        "title": spec["title"],
        "description": spec["description"] or "",
        "duration": round(float(spec["duration"]), 3),
        "file": spec["file"],
        "url": spec["url"],
        "kind": spec["kind"],
        "game": spec["game"],
        "quality_label": spec["quality_label"],
        "made_how": spec["made_how"],
        "expect_keyword": spec["expect_keyword"],
        "keyword_set": spec["keyword_set"],
        "expect_failure": spec["expect_failure"],
        "width": width,
        "height": height,
        "fps": fps,
        "frames": frames,
        "rotation": int(pr.get("rotation") or 0) if has_video_file else 0,
        "vfr": vfr,
        "has_audio": bool(pr.get("has_audio")) if has_video_file else spec["made_how"] == "audio_only",
        "renderer": spec["renderer"],
        "seed": spec["seed"],
        "bytes": res.get("bytes"),
        "sha256": res.get("sha256"),
        "actions": res.get("actions"),
    }


def _check(spec: dict, res: dict) -> None:
    """The catalog must tell the truth: compare what was written with the plan."""
    pr = res.get("probe")
    if not pr:
        return
    if abs(pr["duration"] - spec["duration"]) > 0.05:
        raise RuntimeError(f"{spec['id']}: wrote {pr['duration']:.3f} s, planned {spec['duration']} s")
    if (pr["width"], pr["height"]) != (spec["width"], spec["height"]):
        raise RuntimeError(f"{spec['id']}: wrote {pr['width']}x{pr['height']}")
    if pr["rotation"] != spec["rotation"]:
        raise RuntimeError(f"{spec['id']}: rotation {pr['rotation']} != {spec['rotation']}")
    if res.get("n_actions") not in (None, pr["frames"]):
        raise RuntimeError(f"{spec['id']}: {res['n_actions']} actions for {pr['frames']} frames")


def _pool(workers: int):
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))


def seeded_plan(size: str, seed: int, procgen: bool) -> list[dict]:
    """`plan(size)` with each video's seed, as `generate_corpus(seed=seed)` renders it (one
    video is rendered alone, the same, by `_render_one`)."""
    specs = plan(size, procgen=procgen)
    for i, s in enumerate(specs):
        s["seed"] = int(np.random.SeedSequence([int(seed), i + 1]).generate_state(1)[0] % (2**31 - 1))
    return specs


def generate_corpus(out_dir, seed: int = 0, size: str = "full", *, workers: int | None = None,
                    lerobot: bool = True, verbose: bool = False) -> Path:
    """Render the sample corpus into `out_dir`; returns the path of `catalog.jsonl`.

    Deterministic from `seed`. `size="small"` (tests: ~4 min of footage) or `"full"`.
    `workers` processes render files in parallel (default: min(2, CPUs)).
    """
    from .render import renderers_available

    t0 = time.perf_counter()
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    for old in [*(out / "videos").glob("gc*.mp4"), *(out / "videos").glob("gc*.actions.json")]:
        old.unlink()
    avail = renderers_available()
    missing = [k for k in ("ale", "pybullet") if not avail[k]]
    if missing:
        raise RuntimeError(f"cannot render the corpus without {missing} (pip install 'genie-pipeline[corpus]')")
    specs = seeded_plan(size, seed, procgen=avail["procgen"])
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    results: dict[str, dict] = {}
    jobs = sorted(specs, key=_cost, reverse=True)
    lerobot_eps = 2 if size == "small" else 4
    lerobot_dir = out / "lerobot"
    if workers == 1:
        for s in jobs:
            results[s["id"]] = _render_one(s, str(out))
        if lerobot:
            from .lerobot import generate_lerobot

            generate_lerobot(lerobot_dir, seed=seed, episodes=lerobot_eps)
    else:
        with _pool(workers) as ex:
            futs = {}
            if lerobot:  # the longest single job: start it first
                futs[ex.submit(_lerobot_job, str(lerobot_dir), seed, lerobot_eps)] = "lerobot"
            for s in jobs:
                futs[ex.submit(_render_one, s, str(out))] = s["id"]
            for f in cf.as_completed(futs):
                r = f.result()
                if futs[f] != "lerobot":
                    results[futs[f]] = r
                    if verbose:
                        print(f"  {r['id']}  {r['seconds']:.1f}s", file=sys.stderr)
    shutil.rmtree(out / "_tmp", ignore_errors=True)
    rows = []
    for s in specs:
        _check(s, results[s["id"]])
        rows.append(_row(s, results[s["id"]]))
    cat = out / "catalog.jsonl"
    tmp = out / "catalog.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=True, sort_keys=False) + "\n")
    os.replace(tmp, cat)
    info = {
        "format": CORPUS_FORMAT,
        "seed": seed,
        "size": size,
        "code_version": code_version(),
        "renderers": avail,
        "skipped": [] if avail["procgen"] else ["coinrun (procgen not importable)"],
        "catalog": "catalog.jsonl",
        "lerobot": "lerobot" if lerobot else None,
        "videos": len(rows),
        "good": sum(r["quality_label"] == "good" for r in rows),
        "bad": sum(r["quality_label"] == "bad" for r in rows),
        "broken": sum(r["expect_failure"] is not None for r in rows),
        "source_seconds": round(sum(r["duration"] for r in rows if r["file"] and r["frames"]), 3),
        "generate_seconds": round(time.perf_counter() - t0, 2),
        "workers": workers,
    }
    (out / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
    return cat


def _lerobot_job(root: str, seed: int, episodes: int) -> dict:
    from .lerobot import generate_lerobot

    t = time.perf_counter()
    generate_lerobot(root, seed=seed, episodes=episodes)
    return {"id": "lerobot", "seconds": time.perf_counter() - t}


def read_catalog(path) -> list[dict]:
    p = Path(path)
    if p.is_dir():
        p = p / "catalog.jsonl"
    with open(p, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# -------------------------------------------------------------------------------- cache
def code_version() -> str:
    """A hash of this package's source and the renderer versions: the cache key."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for p in sorted(here.glob("*.py")):
        if p.name in ("serve.py", "search_ie.py"):
            continue
        h.update(p.name.encode())
        h.update(p.read_bytes())
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("ale-py", "pybullet", "av", "numpy", "procgen-mirror", "procgen2", "procgen"):
        try:
            h.update(f"{pkg}={version(pkg)}".encode())
        except PackageNotFoundError:
            pass
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """$GENIE_CORPUS_CACHE, else a folder in the system temp dir (shared by test sessions)."""
    import tempfile

    return Path(os.environ.get("GENIE_CORPUS_CACHE") or Path(tempfile.gettempdir()) / "genie-pipeline-corpus")


def cached_small_corpus(base_dir=None, seed: int = 0) -> Path:
    """Generate the small corpus once into `base_dir/small-s{seed}-{code_version}` and return
    that corpus directory (its catalog is `catalog.jsonl` inside). `base_dir` None: the
    default cache dir. The key changes with this package's code and the renderer versions.

    Safe across processes (file lock); a half-written corpus is never returned.
    """
    base_dir = default_cache_dir() if base_dir is None else base_dir
    base = Path(base_dir)
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"small-s{seed}-{code_version()}"
    if (final / "catalog.jsonl").exists():
        return final
    with open(base / f".small-s{seed}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "catalog.jsonl").exists():
            return final
        tmp = base / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        generate_corpus(tmp, seed=seed, size="small")
        shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover, if any
        os.replace(tmp, final)
        _prune_cache(base, keep=final)
    return final


def _prune_cache(base: Path, keep: Path, max_age_s: float = 86400.0) -> None:
    """Remove cached corpora of other code versions untouched for a day (and stale temp dirs)."""
    now = time.time()
    for d in base.iterdir():
        if d == keep or not d.is_dir() or not (d.name.startswith("small-s") or d.name.startswith(".tmp-small-s")):
            continue
        try:
            if now - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m genie_pipeline.corpus.generate", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", choices=SIZES, default="full")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--no-lerobot", action="store_true")
    a = ap.parse_args(argv)
    cat = generate_corpus(a.out, seed=a.seed, size=a.size, workers=a.workers, lerobot=not a.no_lerobot,
                          verbose=True)
    info = json.loads((cat.parent / "corpus.json").read_text())
    print(f"{cat}  {info['videos']} videos ({info['good']} good, {info['bad']} bad, {info['broken']} broken), "
          f"{info['source_seconds']:.0f} s of footage in {info['generate_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
