"""A small LeRobot v3.0 dataset rendered with pybullet (a Kuka arm reaching for cubes).

Layout (v3: many episodes per file; an episode is a time span of the shared mp4)::

    meta/info.json
    meta/tasks.parquet
    meta/episodes/chunk-000/file-000.parquet
    data/chunk-000/file-000.parquet                        per-frame actions and states
    videos/observation.images.front/chunk-000/file-000.mp4 all episodes, one after another
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FPS = 30
VIDEO_KEY = "observation.images.front"
WIDTH, HEIGHT = 320, 240
RENDER_W, RENDER_H = 160, 120  # TinyRenderer cost grows with pixels: render small, upscale
RENDER_EVERY = 4  # 7.5 renders per second, each held for 4 frames
TASKS = ["reach the red cube", "reach the green cube", "touch the blue cube", "move above the table"]


def generate_lerobot(out_dir, seed: int = 0, episodes: int = 4) -> Path:
    """Write the dataset under `out_dir`; returns `out_dir`. Each episode lasts 17.5-19.5 s
    (it yields one 16 s clip). Deterministic from `seed`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .encode import VideoWriter, resize_rgb
    from .render import ArmSim

    root = Path(out_dir)
    if (root / "meta" / "info.json").exists():
        import shutil

        shutil.rmtree(root)
    vid = root / "videos" / VIDEO_KEY / "chunk-000" / "file-000.mp4"
    vid.parent.mkdir(parents=True, exist_ok=True)
    (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), 7331])

    ep_rows = []
    data = {k: [] for k in ("index", "episode_index", "frame_index", "timestamp", "task_index",
                            "action", "observation.state", "next.done")}
    start = 0
    with VideoWriter(vid, WIDTH, HEIGHT, FPS, gop=30) as w:
        for ep in range(episodes):
            length = int(rng.integers(525, 586))  # 17.5-19.5 s
            task_index = ep % len(TASKS)
            arm = ArmSim("kuka", int(rng.integers(0, 2**31 - 1)), width=RENDER_W, height=RENDER_H)
            arm.view = arm.p.computeViewMatrixFromYawPitchRoll([0.45, 0, 0.15], 1.45, 50, -28, 0, 2,
                                                               physicsClientId=arm.cid)
            img = None
            for i in range(length):
                act = arm.advance(1 / FPS)
                if i % RENDER_EVERY == 0:
                    img = resize_rgb(arm.render(), WIDTH, HEIGHT)
                w.write(img)
                q = [arm.p.getJointState(arm.arm, j, physicsClientId=arm.cid)[0] for j in arm.joints]
                data["index"].append(start + i)
                data["episode_index"].append(ep)
                data["frame_index"].append(i)
                data["timestamp"].append(np.float32(i / FPS))
                data["task_index"].append(task_index)
                data["action"].append(act.tolist())
                data["observation.state"].append(np.asarray(q, np.float32).tolist())
                data["next.done"].append(i == length - 1)
            arm.close()
            ep_rows.append({
                "episode_index": ep,
                "length": length,
                "tasks": [TASKS[task_index]],
                "data/chunk_index": 0,
                "data/file_index": 0,
                "dataset_from_index": start,
                "dataset_to_index": start + length,
                f"videos/{VIDEO_KEY}/chunk_index": 0,
                f"videos/{VIDEO_KEY}/file_index": 0,
                f"videos/{VIDEO_KEY}/from_timestamp": start / FPS,
                f"videos/{VIDEO_KEY}/to_timestamp": (start + length) / FPS,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
            })
            start += length
    total = start

    ep_schema = pa.schema([
        ("episode_index", pa.int64()), ("length", pa.int64()), ("tasks", pa.list_(pa.string())),
        ("data/chunk_index", pa.int64()), ("data/file_index", pa.int64()),
        ("dataset_from_index", pa.int64()), ("dataset_to_index", pa.int64()),
        (f"videos/{VIDEO_KEY}/chunk_index", pa.int64()), (f"videos/{VIDEO_KEY}/file_index", pa.int64()),
        (f"videos/{VIDEO_KEY}/from_timestamp", pa.float64()), (f"videos/{VIDEO_KEY}/to_timestamp", pa.float64()),
        ("meta/episodes/chunk_index", pa.int64()), ("meta/episodes/file_index", pa.int64()),
    ])
    pq.write_table(pa.Table.from_pylist(ep_rows, schema=ep_schema),
                   root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    data_schema = pa.schema([
        ("index", pa.int64()), ("episode_index", pa.int64()), ("frame_index", pa.int64()),
        ("timestamp", pa.float32()), ("task_index", pa.int64()),
        ("action", pa.list_(pa.float32(), 4)), ("observation.state", pa.list_(pa.float32(), 7)),
        ("next.done", pa.bool_()),
    ])
    pq.write_table(pa.Table.from_pydict(data, schema=data_schema), root / "data" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.table({"task_index": pa.array(range(len(TASKS)), pa.int64()), "task": TASKS}),
                   root / "meta" / "tasks.parquet")

    info = {
        "codebase_version": "v3.0",
        "robot_type": "kuka_iiwa",
        "total_episodes": episodes,
        "total_frames": total,
        "total_tasks": len(TASKS),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": FPS,
        "splits": {"train": f"0:{episodes}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            VIDEO_KEY: {
                "dtype": "video",
                "shape": [HEIGHT, WIDTH, 3],
                "names": ["height", "width", "channels"],
                "info": {"video.height": HEIGHT, "video.width": WIDTH, "video.codec": "h264",
                         "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": FPS,
                         "video.channels": 3, "has_audio": False},
            },
            "action": {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "gripper"]},
            "observation.state": {"dtype": "float32", "shape": [7], "names": [f"joint_{i}" for i in range(7)]},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
            "next.done": {"dtype": "bool", "shape": [1], "names": None},
        },
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return root
