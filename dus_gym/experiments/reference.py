"""Reference agents of a DUS env and the normalised score that makes RL results comparable across papers.

A reference agent acts in the env as a policy does, from the observation to an action: the rule
samplers of :mod:`dus_gym.samplers.rules` read the CMD state back from the observation
(:meth:`dus_gym.core.observation.ObservationLayout.decode`) and their counts become an action through
the inverse map :meth:`dus_gym.samplers.action.CountsAction.to_action`. The agents:

- ``uniform``: B samples of every modality (plain joint training);
- ``heuristic``: the DUS heuristic on the observed discrepancy, one decision per env step (its
  settings from ``agents/heuristic.yml``; with the allocation action it splits exactly M x B);
- ``heuristic-replay``: open-loop control of the heuristic: the counts it chose on seed i+1,
  replayed by training progress on seed i (the last seed replays the first);
- ``random``: uniform random actions from the action space (seeded with the episode's seed);
- ``constant[a,b]``: fixed counts, for every cell of :data:`dus_gym.experiments.compare.DEFAULT_GRID`;
  ``best-constant`` is the cell (or uniform) with the highest mean return.

On a task family every seed draws its own instance, of its own number of modalities M: each agent acts
with the current instance's M, and ``heuristic-replay`` and the constants, whose schedules are made for
one M, are skipped (``record["skipped"]``), so the normalised score is undefined there.

Every agent runs on the same seeds: episode seed s resets the env with ``seed=s``, so every agent's
learner starts from the same initialisation and data order (paired). The **normalised score** of an
agent is (R - R_uniform) / (R_best-constant - R_uniform), with R the mean return over the seeds:
0 is uniform sampling, 1 the best constant counts of the grid (chosen on these same episodes, so an
optimistic reference); it is undefined when the best constant does not beat uniform (paired 95 %
interval of its gain above zero), since the scale is then noise.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from dus_gym.core.config import ConfigError, check_seeds, check_workers
from dus_gym.core.files import write_text_atomic
from dus_gym.core.specs import sampler_settings
from dus_gym.envs.env import DUSEnv
from dus_gym.envs.registration import registry_spec
from dus_gym.experiments.cells import execute_cells, file_stem
from dus_gym.experiments.compare import DEFAULT_GRID
from dus_gym.experiments.results import table_header, table_row, write_results
from dus_gym.experiments.stats import format_mean_std, paired_interval
from dus_gym.samplers.base import Sampler, SamplerState
from dus_gym.samplers.rules import ConstantSampler, HeuristicSampler, ScheduleSampler, UniformSampler

UNIFORM = "uniform"
BEST = "best-constant"
AGENTS = ("uniform", "heuristic", "heuristic-replay", "random", "constant")
"""The agents :func:`run_reference` can run ("constant": every cell of the grid)."""


class ReferenceAgent(ABC):
    """Acts in a DUS env from its observations.

    Args:
        env: the (unwrapped) env it acts in: its action mapping and observation layout.
    """

    def __init__(self, env: DUSEnv) -> None:
        self.env = env

    def reset(self, seed: int) -> None:  # noqa: B027 (a hook: most agents keep no state)
        """A new episode, reset with ``seed``."""

    @abstractmethod
    def act(self, obs: np.ndarray) -> np.ndarray:
        """The action for ``obs``."""


class SamplerAgent(ReferenceAgent):
    """A rule sampler acting through the env: observation -> CMD state -> counts -> action.

    Args:
        env: the (unwrapped) env it acts in.
        sampler: the sampler, or a function of (B, M) that makes it: then it is made again whenever the
            env's current task has another number of modalities M (a family env draws an instance, of 2 or
            3 modalities, at every reset).
    """

    def __init__(self, env: DUSEnv, sampler: Sampler | Callable[[int, int], Sampler]) -> None:
        super().__init__(env)
        self.make = None if isinstance(sampler, Sampler) else sampler
        self.sampler = sampler if isinstance(sampler, Sampler) else None

    def current(self) -> Sampler:
        """The sampler for the env's current task (made for its M when built from a function)."""
        M = self.env.n_modalities
        if self.make is not None and (self.sampler is None or self.sampler.n_modalities != M):
            self.sampler = self.make(self.env.learner_config.batch_size, M)
        return self.sampler

    def state(self, obs: np.ndarray) -> SamplerState:
        """The sampler's view of the observation."""
        s = self.env.layout.decode(obs)
        T = self.env.n_iterations
        return SamplerState(iteration=int(round(s["progress"] * T)), n_iterations=T,
                            batch_size=self.env.learner_config.batch_size, cumulative=s["cumulative"],
                            discrepancy=s["discrepancy"], status=s["status"], counts=s["counts"].astype(np.int64),
                            observation=np.asarray(obs, dtype=np.float32))

    def reset(self, seed: int) -> None:
        """Forget the last episode: a sampler made from a function is made again at the first action."""
        if self.make is not None:
            self.sampler = None
        else:
            self.sampler.reset()

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The sampler's counts for the observed state, as the nearest action.

        On a strength env (the action is the heuristic's alpha) uniform is alpha 0 and the heuristic is
        its own alpha (clipped to the env's ``max_alpha``): the env then reallocates at every iteration
        exactly as the sampler would.
        """
        sampler = self.current()
        actions = self.env.actions
        if actions.reacts:
            if isinstance(sampler, UniformSampler):
                alpha = 0.0
            elif isinstance(sampler, HeuristicSampler) and not sampler.reverse and sampler.source == "train":
                alpha = sampler.alpha
            else:
                raise ValueError(f"the {sampler.name} sampler has no strength action (only uniform and the heuristic)")
            return np.array([np.clip(2.0 * alpha / actions.max_alpha - 1.0, -1.0, 1.0)], dtype=np.float32)
        return actions.to_action(sampler.counts(self.state(obs)))


class RandomAgent(ReferenceAgent):
    """Uniform random actions from the env's action space, seeded with the episode's seed."""

    def reset(self, seed: int) -> None:
        """Seed the action space's generator."""
        self.env.action_space.seed(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """A random action."""
        return self.env.action_space.sample()


@dataclass
class Episode:
    """One agent's episode on one seed."""

    seed: int
    initial_val_acc: float
    final_val_acc: float = 0.0
    episode_return: float = 0.0
    steps: int = 0
    counts: list[list[int]] = field(default_factory=list)
    """The counts of every step (as the env used them)."""


def run_episode(env: gym.Env, agent: ReferenceAgent, seed: int) -> Episode:
    """Run ``agent`` for one episode of ``env`` reset with ``seed``."""
    agent.reset(seed)
    obs, info = env.reset(seed=seed)
    episode = Episode(seed, float(info["val_acc"]))
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(agent.act(obs))
        done = terminated or truncated
        episode.episode_return += float(reward)
        episode.steps += 1
        if "counts" in info:
            episode.counts.append([int(n) for n in info["counts"]])
    episode.final_val_acc = float(info["val_acc"])
    return episode


def grid_counts(n_modalities: int) -> list[tuple[int, ...]]:
    """The constant counts tried (two modalities: the grid of ``dus-gym compare --grid``)."""
    if n_modalities != 2:
        raise ConfigError(f"the constant-count grid is defined for 2 modalities, this env has {n_modalities}")
    return [tuple(c) for c in DEFAULT_GRID]


@dataclass(frozen=True)
class EpisodeCell:
    """One reference agent's episode on one seed: a cell of :func:`dus_gym.experiments.cells.execute_cells`.

    Args:
        key: ``<agent>/seed<seed>``.
        env_id: the registered env id.
        env_kwargs: its overrides.
        agent: the agent's label (``uniform``, ``heuristic``, ``random``, ``constant[a,b]``, ``heuristic-replay``).
        seed: the episode's seed.
        heuristic: the heuristic's settings (agents "heuristic").
        counts: the constant counts (agents "constant[...]").
        schedule: the replayed counts, one row per step (agent "heuristic-replay").
    """

    key: str
    env_id: str
    env_kwargs: dict[str, Any]
    agent: str
    seed: int
    heuristic: dict[str, Any] = field(default_factory=dict)
    counts: tuple[int, ...] | None = None
    schedule: tuple[tuple[int, ...], ...] | None = None

    @property
    def file_stem(self) -> str:
        """File name of the cell (the key with path-safe characters)."""
        return file_stem(self.key)

    def settings(self) -> dict[str, Any]:
        """What the episode depends on, as JSON reads it back (a record of other settings is run again)."""
        return json.loads(json.dumps({k: v for k, v in asdict(self).items() if k != "key"}))


def make_agent(cell: EpisodeCell, env: DUSEnv) -> ReferenceAgent:
    """The agent of ``cell`` acting in ``env``."""
    B, M = env.learner_config.batch_size, env.n_modalities
    if cell.agent == UNIFORM:
        return SamplerAgent(env, UniformSampler)
    if cell.agent == "heuristic":
        return SamplerAgent(env, lambda b, m: HeuristicSampler(b, m, **cell.heuristic))
    if cell.agent == "random":
        return RandomAgent(env)
    if cell.agent == "heuristic-replay" and cell.schedule is not None:
        return SamplerAgent(env, ScheduleSampler(B, M, [list(row) for row in cell.schedule]))
    if cell.counts is not None:
        return SamplerAgent(env, ConstantSampler(B, M, list(cell.counts)))
    raise ConfigError(f"unknown reference agent '{cell.agent}'; choose among {list(AGENTS)}")


def run_episode_cell(cell: EpisodeCell, cells_dir: str) -> dict[str, Any]:
    """Run the episode of ``cell`` in a fresh env and write its record (JSON) atomically; returns the record."""
    env = gym.make(cell.env_id, **cell.env_kwargs)
    try:
        episode = run_episode(env, make_agent(cell, env.unwrapped), cell.seed)
    finally:
        env.close()
    record = {"key": cell.key, "settings": cell.settings(), "episode": asdict(episode)}
    folder = Path(cells_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / f"{cell.file_stem}.json", json.dumps(record))
    return record


def load_episode_cell(cell: EpisodeCell, cells_dir: Path) -> dict[str, Any] | None:
    """The finished record of ``cell`` (None when it is missing, damaged or of other settings: run it)."""
    path = Path(cells_dir) / f"{cell.file_stem}.json"
    try:
        record = json.loads(path.read_text())
        Episode(**record["episode"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if record.get("settings") == cell.settings() else None


def run_reference(env_id: str, seeds: Sequence[int], env_kwargs: dict[str, Any] | None = None,
                  agents: Sequence[str] = AGENTS, out_dir: Path | None = None, progress: bool = True,
                  workers: int | None = 1) -> dict[str, Any]:
    """Run the reference agents on ``env_id`` over ``seeds``; return (and write) the record and its table.

    Every (agent, seed) episode is a cell (:mod:`dus_gym.experiments.cells`) in ``out_dir/cells``, run in
    a fresh env: ``workers`` processes run them (1: in this process), and an interrupted run continues
    where it stopped.

    Args:
        env_id: a registered DUS env id.
        seeds: episode seeds (the same for every agent).
        env_kwargs: overrides of the env's spec (``gymnasium.make`` kwargs).
        agents: among :data:`AGENTS` (uniform is always run: it is the score's zero).
        out_dir: where ``reference.json``, ``table.md`` and the cells go (None: a temporary folder).
        progress: show a progress bar.
        workers: processes (None: the CPU count).
    """
    registry_spec(env_id)  # a registered DUS id, else a ConfigError naming the registered ones
    check_seeds(list(seeds))
    unknown = sorted(set(agents) - set(AGENTS))
    if unknown:
        raise ConfigError(f"unknown reference agents {unknown}; choose among {list(AGENTS)}")
    if "heuristic-replay" in agents and len(seeds) < 2:
        raise ConfigError("heuristic-replay replays another seed's counts: give at least 2 seeds")
    check_workers(workers)
    env_kwargs = dict(env_kwargs or {})
    env = gym.make(env_id, **env_kwargs)
    core: DUSEnv = env.unwrapped  # type: ignore[assignment]
    heuristic = {**sampler_settings("heuristic", core.task.name)}
    heuristic.update(n_min=core.config.n_min, n_max=core.config.n_max,
                     allocation=core.config.action_type in ("allocation", "strength"))
    skipped: list[str] = []
    # a family: each seed draws its own instance (M = 2 or 3), no schedule fits them all; the strength action
    # chooses the rule's alpha, not counts
    if core.family is not None or core.actions.reacts:
        skipped = [name for name in ("heuristic-replay", "constant") if name in agents]
        agents = [name for name in agents if name not in skipped]
    labels: list[tuple[str, tuple[int, ...] | None]] = [(UNIFORM, None)]
    if "heuristic" in agents or "heuristic-replay" in agents:
        labels.append(("heuristic", None))
    if "random" in agents:
        labels.append(("random", None))
    if "constant" in agents:
        labels += [(f"constant[{','.join(map(str, counts))}]", tuple(counts))
                   for counts in grid_counts(core.n_modalities)]

    def cells_of(label: str, counts: tuple[int, ...] | None = None,
                 schedule_of: Callable[[int], tuple[tuple[int, ...], ...]] | None = None) -> list[EpisodeCell]:
        return [EpisodeCell(f"{label}/seed{seed}", env_id, env_kwargs, label, int(seed), heuristic, counts,
                            schedule_of(i) if schedule_of is not None else None) for i, seed in enumerate(seeds)]

    with contextlib.ExitStack() as stack:
        folder = Path(out_dir) if out_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))

        def run(cells: list[EpisodeCell]) -> dict[str, dict[str, Any]]:
            return execute_cells(cells, folder / "cells", workers, progress, "reference episodes",
                                 run=run_episode_cell, load=load_episode_cell)[0]

        plan = {label: cells_of(label, counts) for label, counts in labels}
        records = run([cell for cells in plan.values() for cell in cells])
        episodes = {label: [Episode(**records[c.key]["episode"]) for c in cells] for label, cells in plan.items()}
        if "heuristic-replay" in agents:
            chosen = episodes["heuristic"]
            replay = cells_of("heuristic-replay", schedule_of=lambda i: tuple(
                tuple(row) for row in chosen[(i + 1) % len(seeds)].counts))
            replayed = run(replay)
            episodes["heuristic-replay"] = [Episode(**replayed[c.key]["episode"]) for c in replay]
    if "heuristic" not in agents:
        episodes.pop("heuristic", None)
    record = reference_record(env_id, core, list(seeds), env_kwargs, episodes)
    env.close()
    record["skipped"] = skipped
    if out_dir is not None:
        write_results(Path(out_dir), "reference", record)
    return record


@dataclass(frozen=True)
class NormalisedScores:
    """The normalised score of every agent, and the reference it is normalised by."""

    scores: dict[str, float]
    """(R - R_uniform) / (R_best - R_uniform) per agent (nan for all when undefined)."""
    best: str
    """The best constant (or uniform): the highest mean return among them."""
    gain: tuple[float, float, float]
    """The best constant's paired return difference to uniform: mean and 95 % interval."""

    @property
    def defined(self) -> bool:
        """True when the best constant beats uniform: the 95 % interval of the gain lies above zero."""
        return bool(self.gain[1] > 0)


def normalised_scores(returns: dict[str, Sequence[float]]) -> NormalisedScores:
    """The normalised scores of agents' returns (same seeds, in the same order for every agent).

    0 is ``uniform``, 1 the agent among ``uniform`` and ``constant[...]`` with the highest mean
    return. The score is defined only when that constant beats uniform with a paired 95 %
    interval above zero: otherwise the scale R_best - R_uniform is noise, and dividing by it makes
    tiny differences look large (every score is then nan).
    """
    mean = {label: float(np.mean(r)) for label, r in returns.items()}
    best = max((label for label in returns if label == UNIFORM or label.startswith("constant[")), key=mean.get)
    gain = paired_interval(returns[best], returns[UNIFORM]) if best != UNIFORM else (0.0, float("nan"), float("nan"))
    scale = mean[best] - mean[UNIFORM]
    ok = bool(gain[1] > 0)
    scores = {label: (m - mean[UNIFORM]) / scale if ok else float("nan") for label, m in mean.items()}
    return NormalisedScores(scores, best, gain)


def reference_record(env_id: str, env: DUSEnv, seeds: list[int], env_kwargs: dict[str, Any],
                     episodes: dict[str, list[Episode]]) -> dict[str, Any]:
    """The JSON record of the episodes: per agent the returns, final accuracies, mean counts, normalised score."""
    scores = normalised_scores({label: [e.episode_return for e in es] for label, es in episodes.items()})
    # a family's episodes have 2 or 3 modalities: counts by slot, a slot's mean over the episodes that use it
    modalities = [f"slot{k}" for k in range(env.layout.slots)] if env.family is not None else list(env.task.modalities)
    agents = {}
    for label, es in episodes.items():
        per_slot: list[list[float]] = [[] for _ in modalities]
        for e in es:
            for k, n in enumerate(np.mean(e.counts, axis=0)):
                per_slot[k].append(float(n))
        agents[label] = {
            "returns": [e.episode_return for e in es], "final_val_acc": [e.final_val_acc for e in es],
            "initial_val_acc": [e.initial_val_acc for e in es], "steps": [e.steps for e in es],
            "mean_counts": [float(np.mean(c)) if c else float("nan") for c in per_slot],
            "normalised_score": scores.scores[label],
        }
    record = {"env_id": env_id, "seeds": seeds, "env_kwargs": env_kwargs, "modalities": modalities,
              "n_iterations": env.n_iterations, "iterations_per_step": env.config.iterations_per_step,
              "action_type": env.config.action_type, "best_constant": scores.best,
              "best_constant_gain": list(scores.gain), "score_defined": scores.defined, "agents": agents}
    record["table"] = format_reference_table(record)
    return record


def format_reference_table(record: dict[str, Any]) -> str:
    """A markdown table: return and final validation accuracy (mean ± std), Δ return vs uniform, normalised score."""
    modalities = record["modalities"]
    head = ["agent", "return", "final val acc", "Δ return vs uniform [95% CI]", "normalised score",
            *(f"mean count {m}" for m in modalities)]
    lines = table_header(head)
    agents = record["agents"]
    uniform = agents[UNIFORM]["returns"]
    rows = list(agents.items()) + [(f"{BEST} = {record['best_constant']}", agents[record["best_constant"]])]
    for label, a in rows:
        if label == UNIFORM:
            delta = "—"
        else:
            d, lo, hi = (round(v, 4) + 0.0 for v in paired_interval(a["returns"], uniform))  # no "-0.0000"
            delta = f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" if np.isfinite(lo) else f"{d:+.4f}"
        score = a["normalised_score"]
        shown = "—" if not np.isfinite(score) else f"{round(score, 2) + 0.0:.2f}"
        lines.append(table_row([
            label, format_mean_std(a["returns"], scale=1.0, digits=4), format_mean_std(a["final_val_acc"]) + " %",
            delta, shown, *(f"{n:.1f}" for n in a["mean_counts"]),
        ]))
    return "\n".join(lines)
