"""The template's pure parts: configuration, sharding, checkpoints (no training)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "template"))
import config  # noqa: E402
import data  # noqa: E402
import loop  # noqa: E402


def test_command_line_overrides_the_config_file(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[train]\nepochs = 7\nlr = 0.5\n")
    cfg = config.load(["--config", str(cfg_file), "--epochs", "3", "--batch-size", "16"])
    assert (cfg.epochs, cfg.lr, cfg.batch_size) == (3, 0.5, 16)


def test_unknown_keys_and_bad_values_are_refused(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[train]\nepoch = 7\n")
    with pytest.raises(SystemExit):
        config.load(["--config", str(cfg_file)])
    with pytest.raises(SystemExit):
        config.load(["--epochs", "0"])
    with pytest.raises(SystemExit):
        config.load(["--epochs", "abc"])


def test_shards_are_disjoint_and_cover_the_training_set() -> None:
    x = np.arange(101).reshape(-1, 1)
    shards = [data.shard(x, x[:, 0], r, 3)[1] for r in range(3)]
    together = np.concatenate(shards)
    assert sorted(together.tolist()) == list(range(101))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def test_the_split_is_the_same_on_every_rank() -> None:
    a = data.load(0.2, seed=3)
    b = data.load(0.2, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert len(a[2]) == int(1797 * 0.2)


def test_last_checkpoint_is_the_highest_epoch(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    for n in (1, 12, 3):
        (tmp_path / "checkpoints" / f"epoch-{n:03d}.h5").write_bytes(b"x")
    (tmp_path / "checkpoints" / "tmpabc.h5").write_bytes(b"partial")
    path, epoch = loop.last_checkpoint(tmp_path)
    assert (path.name, epoch) == ("epoch-012.h5", 12)
    assert loop.last_checkpoint(tmp_path / "nothing") is None
