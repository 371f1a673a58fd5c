"""`verify` catches bytes changed inside a shard after it was written: the sha256 in its stats
file is compared, not only the tar structure and the decodability of each clip."""
from __future__ import annotations

import io
import tarfile

from genie_pipeline.cli import main as cli_main
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.shards.verify import verify
from tests.fixtures.output import write_sprite_output

SMALL = ClipsConfig(width=64, height=48, seconds=3.2)


def _flip_inside_first_mp4(tar_path, n: int = 400) -> None:
    """Invert `n` bytes in the middle of the first mp4 member's data, in place."""
    with tarfile.open(tar_path) as tar:
        m = next(m for m in tar.getmembers() if m.name.endswith(".mp4"))
    start = m.offset_data + m.size // 2 - n // 2
    with open(tar_path, "r+b") as f:
        f.seek(start)
        block = f.read(n)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in block))


def test_a_bit_flip_inside_an_mp4_fails_verify(tmp_path, capsys):
    paths = write_sprite_output(tmp_path, n_train_shards=2, clips_per_shard=2, n_val_shards=1, seed=3, clips=SMALL)
    assert verify(str(tmp_path), decode=False) == []
    assert cli_main(["verify", str(tmp_path)]) == 0
    _flip_inside_first_mp4(paths[0])
    with tarfile.open(paths[0]) as tar:  # still a readable tar with the same members
        assert len(tar.getmembers()) == 4
    problems = verify(str(tmp_path), decode=False)
    assert len(problems) == 1 and "train-000000.tar: changed since it was written: its sha256 differs" in problems[0]
    capsys.readouterr()
    assert cli_main(["verify", str(tmp_path)]) == 1
    assert "sha256 differs" in capsys.readouterr().out
    assert cli_main(["verify", "--deep", str(tmp_path)]) == 1
