"""What a DUS env shows when rendered: a text line per step (``"ansi"``, ``"human"``) or a small plot (``"rgb_array"``).

An :class:`EpisodeTrace` keeps, for one episode, a :class:`StepRecord` per env step (the reset
included): the learner iteration, the counts of the last iteration, the cumulative status c(m),
the discrepancy d(m) (the CMD) and the fused validation accuracy. ``"ansi"`` is the last record
as one line; ``"human"`` prints that line to stdout at every reset and step (Gymnasium's human
mode renders without being asked; a text env has no window), so that ``rl_zoo3.enjoy`` runs
without ``--no-render``; ``"rgb_array"`` plots d(m) and the counts over the iterations so far, so
that ``gymnasium.wrappers.RecordVideo``, SB3's ``VecVideoRecorder`` and ``rl_zoo3.record_video``
can film an episode. The plot is drawn with Matplotlib's Agg canvas (no pyplot, no global state).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dus_gym.core.episode import Episodes
from dus_gym.core.extras import require

RENDER_MODES = ("ansi", "human", "rgb_array")
"""The render modes of ``DUSEnv`` and ``DUSVectorEnv``."""
RENDER_FPS = 4
"""Frames per second of a recorded video (one frame per env step)."""
FRAME_SIZE = (320, 240)
"""Width and height of an ``"rgb_array"`` frame in pixels."""


def check_render_mode(render_mode: str | None) -> None:
    """Raise a ValueError unless ``render_mode`` is None or one of :data:`RENDER_MODES`.

    ``"rgb_array"`` draws with matplotlib (the ``bench`` extra): without it, an ImportError saying
    ``pip install 'dus-gym[bench]'``, when the env is made rather than at its first frame.
    """
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {list(RENDER_MODES)} or None, got {render_mode!r}")
    if render_mode == "rgb_array":
        require("matplotlib", "bench", "rgb_array frames")


@dataclass(frozen=True)
class StepRecord:
    """The state of one episode after an env step (or its reset, step 0)."""

    step: int
    iteration: int
    counts: np.ndarray
    cumulative: np.ndarray
    discrepancy: np.ndarray
    val_acc: float

    @classmethod
    def of(cls, episodes: Episodes, i: int, step: int) -> StepRecord:
        """Episode ``i``'s record now."""
        monitor = episodes.monitors[i]
        iteration = int(episodes.learners.iteration[i] - episodes.start_iteration[i])
        return cls(step, iteration, episodes.counts[i].copy(), np.asarray(monitor.cumulative, dtype=float).copy(),
                   np.asarray(monitor.discrepancy, dtype=float).copy(), float(episodes.score[i]))


class EpisodeTrace:
    """The records of one episode, and its text line and plot.

    Args:
        modalities: the task's modality names, in count order.
        n_iterations: T, the episode's budget (the plot's x range).
    """

    def __init__(self, modalities: tuple[str, ...], n_iterations: int) -> None:
        self.modalities = tuple(modalities)
        self.n_iterations = n_iterations
        self.records: list[StepRecord] = []
        self.printed = -1
        """The step whose line "human" mode printed last."""

    def start(self, episodes: Episodes, i: int) -> None:
        """A new episode: its first record (after the reset)."""
        self.records = [StepRecord.of(episodes, i, 0)]
        self.printed = -1

    def add(self, episodes: Episodes, i: int) -> None:
        """Record episode ``i`` after a step."""
        self.records.append(StepRecord.of(episodes, i, len(self.records)))

    def render(self, mode: str | None) -> str | np.ndarray | None:
        """The frame of ``mode`` (None: nothing; "human": print the line once per step, return None)."""
        if mode is None:
            return None
        if not self.records:
            raise RuntimeError("call reset() before render()")
        if mode == "human":
            if self.printed != self.records[-1].step:
                print(self.ansi(), end="", flush=True)
                self.printed = self.records[-1].step
            return None
        return self.ansi() if mode == "ansi" else self.rgb_array()

    def ansi(self) -> str:
        """The last record on one line: step, iteration, counts, c(m), d(m), fused validation accuracy."""
        r = self.records[-1]
        counts = " ".join(f"{m}={int(n)}" for m, n in zip(self.modalities, r.counts, strict=True))
        c = " ".join(f"{v:.3f}" for v in r.cumulative)
        d = " ".join(f"{v:+.3f}" for v in r.discrepancy)
        return (f"step {r.step:3d} | iteration {r.iteration:5d}/{self.n_iterations} | counts {counts} | c {c} | "
                f"d {d} | val acc {r.val_acc:.3f}\n")

    def rgb_array(self) -> np.ndarray:
        """A (240, 320, 3) uint8 plot of d(m) (top) and the counts (bottom) over the iterations so far."""
        FigureCanvasAgg = require("matplotlib.backends.backend_agg", "bench", "rgb_array frames").FigureCanvasAgg
        Figure = require("matplotlib.figure", "bench", "rgb_array frames").Figure

        width, height = FRAME_SIZE
        figure = Figure(figsize=(width / 80, height / 80), dpi=80)
        canvas = FigureCanvasAgg(figure)
        top, bottom = figure.subplots(2, 1, sharex=True)
        iterations = [r.iteration for r in self.records]
        d = np.array([r.discrepancy for r in self.records])
        counts = np.array([r.counts for r in self.records])
        for k, m in enumerate(self.modalities):
            top.plot(iterations, d[:, k], label=m, linewidth=1.2)
            bottom.step(iterations, counts[:, k], where="pre", linewidth=1.2)
        top.axhline(0.0, color="grey", linewidth=0.5)
        top.set_ylabel("CMD d(m)", fontsize=7)
        bottom.set_ylabel("count n(m)", fontsize=7)
        bottom.set_xlabel("iteration", fontsize=7)
        bottom.set_xlim(0, self.n_iterations)
        top.legend(fontsize=6, loc="upper right")
        top.set_title(f"step {self.records[-1].step}, val acc {self.records[-1].val_acc:.3f}", fontsize=8)
        for axis in (top, bottom):
            axis.tick_params(labelsize=6)
        figure.tight_layout(pad=0.3)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()
