"""Helpers of test modules in several folders (the fixtures are in conftest.py).

The one-line check of a refused command line, short run flags, files that name code (to be refused), a
victim folder such code would delete, a prepared CREMA-D folder and a PNG that declares huge dimensions."""

import json
from pathlib import Path

import numpy as np
import yaml

from dus_gym.cli import main

FAST = ["--iterations", "40", "--no-progress", "--set", "eval_every=20", "--set", "task_kwargs.hidden_dim=16"]


def only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def one_line(capsys, argv, tmp_path) -> str:
    """Run the CLI, expect exit 2 and exactly one 'dus-gym: error:' line; return it."""
    own_dir = argv[0] in ("run", "train-policy") and "--resume" not in argv and "--run-dir" not in argv
    code = main([*argv, "--run-dir", str(tmp_path / "runs")] if own_dir else argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert err.startswith("dus-gym: error:") and len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.err
    return err


REWARD_WEIGHTS = ("reward_delta_weight", "reward_cmd_weight", "reward_terminal_weight", "divergence_penalty")
ENV_KWARGS = {"n_iterations": 4, "iterations_per_step": 2, "task_kwargs": {"hidden_dim": 4, "n_samples": 300}}
EVIL = "os:system"


def marker_kwargs(tmp_path):
    return {"command": f"touch {tmp_path / 'pwned'}"}


def family_spec(tmp_path, **changes):
    spec = {"task": "synthetic", "task_kwargs": {"hidden_dim": 4, "n_samples": 300}, "n_iterations": 4,
            "env": {"observation": "modalities", "max_modalities": 3},
            "family": {"generator": "synthetic", "generator_kwargs": {"n_instances": 4}}}
    for key, value in changes.items():
        spec = {**spec, key: {**spec[key], **value} if isinstance(value, dict) and key != "task_kwargs" else value}
    path = tmp_path / "user-family.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def plant_victim(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "keep.txt").write_text("still here")
    return victim


def prepared_root(tmp_path, rows: str, audio: np.ndarray):
    root = tmp_path / "cremad"
    (root / "audio").mkdir(parents=True)
    (root / "visual" / "c0").mkdir(parents=True)
    (root / "metadata.json").write_text(json.dumps({"format": "dus-gym-audiovisual", "dataset": "cremad",
                                                    "classes": ["NEU", "HAP"]}))
    (root / "train.csv").write_text(rows)
    (root / "test.csv").write_text("clip,label\nc0,NEU\n")
    np.save(root / "audio" / "c0.npy", audio)
    return root


def png_header_only(path, width, height):
    """A PNG that declares ``width`` x ``height`` pixels in a few bytes (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
