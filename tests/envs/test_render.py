"""Render modes of the DUS env: one text line per step ("ansi"), a plot of CMD and counts ("rgb_array")."""

import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dus_gym  # noqa: F401 (registers the ids)

TINY = {"n_iterations": 20, "iterations_per_step": 10, "task_kwargs": {"n_samples": 300, "hidden_dim": 8}}
ENV_ID = "dus_gym/Synthetic-v0"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_ansi_is_one_line_per_step_with_counts_cmd_and_val_accuracy():
    env = gym.make(ENV_ID, render_mode="ansi", **TINY)
    _, info = env.reset(seed=0)
    first = env.render()
    assert first.startswith("step   0 | iteration     0/20 | counts dominant=64 weak=64 | c 0.000 0.000 |")
    assert first.endswith(f"val acc {info['val_acc']:.3f}\n") and first.count("\n") == 1
    _, _, _, _, info = env.step(np.array([-1.0, 1.0], dtype=np.float32))
    line = env.render()
    monitor = env.unwrapped.monitor
    c = " ".join(f"{v:.3f}" for v in monitor.cumulative)
    d = " ".join(f"{v:+.3f}" for v in monitor.discrepancy)
    assert line == (f"step   1 | iteration    10/20 | counts dominant=8 weak=256 | c {c} | d {d} | "
                    f"val acc {info['val_acc']:.3f}\n")
    assert monitor.discrepancy[0] == pytest.approx(-monitor.discrepancy[1]) and monitor.gap > 0


def test_human_mode_prints_the_line_at_every_reset_and_step(capsys):
    env = gym.make(ENV_ID, render_mode="human", **TINY)
    env.reset(seed=0)
    env.step(np.array([-1.0, 1.0], dtype=np.float32))
    assert env.render() is None  # the step's line is already printed: not twice
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("step   0 |") and "counts dominant=8 weak=256" in lines[1]


def test_rgb_array_frames_plot_the_episode_and_pass_the_render_check():
    env = gym.make(ENV_ID, render_mode="rgb_array", **TINY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)  # includes the render check of every mode in metadata
    assert not [w for w in caught if "render" in str(w.message).lower()]
    env.reset(seed=0)
    first = env.render()
    assert first.shape == (240, 320, 3) and first.dtype == np.uint8 and first.std() > 0
    env.step(np.array([1.0, -1.0], dtype=np.float32))
    second = env.render()
    assert second.shape == first.shape and (second != first).mean() > 0.01  # the curves grew
    plain = gym.make(ENV_ID, **TINY)
    plain.reset(seed=0)
    assert plain.render() is None
    with pytest.raises(ValueError, match="render_mode must be one of"):
        gym.make(ENV_ID, render_mode="rgb", **TINY)


def test_rgb_array_without_matplotlib_names_its_extra_when_the_env_is_made(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as on a core install: import fails
    with pytest.raises(ImportError, match=r"pip install 'dus-gym\[bench\]'"):
        gym.make(ENV_ID, render_mode="rgb_array", **TINY)
    gym.make(ENV_ID, render_mode="ansi", **TINY).close()  # the text modes need nothing more
