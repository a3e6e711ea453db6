"""Where the N learners of a policy-training run live: one table of vec-env kinds.

=============  ==========================================================================
kind           the learners run
=============  ==========================================================================
``dummy``      in this process, one after the other (SB3 ``DummyVecEnv``)
``subproc``    one spawned process per env (SB3 ``SubprocVecEnv``), env i's learner on
               ``devices[i % len]`` (by default every visible GPU in turn when the learner's
               device is "cuda" or "auto")
``vectorized`` in this process, all N in one batched computation (:class:`~dus_gym.envs.vector.batched.VecDUSEnv`)
``ray``        one Ray actor per env with its own CPU/GPU share (:class:`~dus_gym.envs.vector.ray_vec_env.RayVecEnv`)
``auto``       ``vectorized`` where the env's learners can be batched on one device (in-memory data,
               a batchable method, sgd, fp32: the small learners of the built-in tasks and families,
               for which one batched computation is faster than N processes), else ``subproc``
=============  ==========================================================================

Every kind is built by :func:`build_vec_env` from an env id and DUSEnv-style overrides, which
are merged into the spec key by key (:func:`dus_gym.envs.registration.spec_kwargs`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor

from dus_gym.core.batched_learner import BatchedLearner
from dus_gym.core.config import ConfigError, from_dict
from dus_gym.core.learner import Learner
from dus_gym.core.registry import Registry
from dus_gym.core.specs import deep_merge
from dus_gym.envs.registration import spec_kwargs
from dus_gym.envs.vector.batched import VecDUSEnv
from dus_gym.envs.vector.ray_vec_env import RayVecEnv, RayVecEnvConfig
from dus_gym.envs.wrappers import ErrorRecoveryWrapper

VecEnvBuilder = Callable[..., VecEnv]
logger = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
    """``["cuda:0", "cuda:1", ...]`` for the GPUs this process sees (empty without CUDA)."""
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def assign_devices(n_envs: int, devices: Sequence[str]) -> list[str]:
    """Env i's learner device: ``devices[i % len(devices)]`` (round robin)."""
    if not devices:
        raise ConfigError("the device list is empty; give at least one device (e.g. cuda:0) or none at all")
    return [devices[i % len(devices)] for i in range(n_envs)]


def env_devices(env_id: str, n_envs: int, env_kwargs: dict[str, Any], devices: Sequence[str] | None
                ) -> list[str | None]:
    """Per-env learner devices: ``devices`` round robin; None: visible GPUs for a cuda/auto learner, else unpinned."""
    if devices is not None:
        return list(assign_devices(n_envs, devices))
    wanted = spec_kwargs(env_id, env_kwargs)["learner"].get("device", "cpu")
    gpus = visible_gpus() if str(wanted) in ("cuda", "auto") else []
    return list(assign_devices(n_envs, gpus)) if gpus else [None] * n_envs


def make_env(env_id: str, rank: int, seed: int, env_kwargs: dict[str, Any], single_thread: bool,
             device: str | None = None) -> gym.Env:
    """One monitored env (a picklable factory body for the vec envs); its learner on ``device`` if given.

    Args:
        env_id: a registered DUS env id.
        rank: the env's index; its first episode is seeded with ``seed + rank``.
        seed: the base seed.
        env_kwargs: overrides of the spec (merged key by key).
        single_thread: one torch thread, and Ctrl-C left to the parent process (for envs in worker processes).
        device: the learner's device (and CUDA's current device); None: the spec's.
    """
    if single_thread:
        torch.set_num_threads(1)
        if threading.current_thread() is threading.main_thread():
            # a worker must not die of the terminal's Ctrl-C: the parent stops training and closes it cleanly
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    if device is not None and device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_device(torch.device(device))
    if device is not None:
        env_kwargs = deep_merge(env_kwargs, {"learner": {"device": device}})
    env = ErrorRecoveryWrapper(gym.make(env_id, **env_kwargs))  # an env that raises must not stop PPO
    env = Monitor(env, info_keywords=env.unwrapped.info_keywords())
    env.reset(seed=seed + rank)
    env.action_space.seed(seed + rank)
    return env


def build_dummy(env_id: str, n_envs: int, seed: int, env_kwargs: dict[str, Any],
                devices: Sequence[str] | None = None, ray: dict[str, Any] | None = None) -> VecEnv:
    """``DummyVecEnv``: the envs in this process, one after the other."""
    pinned = assign_devices(n_envs, devices) if devices is not None else [None] * n_envs
    return DummyVecEnv([partial(make_env, env_id, i, seed, env_kwargs, False, pinned[i]) for i in range(n_envs)])


def build_subproc(env_id: str, n_envs: int, seed: int, env_kwargs: dict[str, Any],
                  devices: Sequence[str] | None = None, ray: dict[str, Any] | None = None) -> VecEnv:
    """``SubprocVecEnv`` (spawn), env i's learner on its device; one env runs in this process."""
    if n_envs == 1:
        return build_dummy(env_id, n_envs, seed, env_kwargs, devices)
    pinned = env_devices(env_id, n_envs, env_kwargs, devices)
    factories = [partial(make_env, env_id, i, seed, env_kwargs, True, pinned[i]) for i in range(n_envs)]
    return SubprocVecEnv(factories, start_method="spawn")


def build_vectorized(env_id: str, n_envs: int, seed: int, env_kwargs: dict[str, Any],
                     devices: Sequence[str] | None = None, ray: dict[str, Any] | None = None) -> VecEnv:
    """One :class:`~dus_gym.envs.vector.batched.VecDUSEnv` (N learners batched on one device), monitored."""
    if devices is not None:
        if len(set(devices)) > 1:
            raise ConfigError("the vectorised env runs its learners on one device; give one device or use "
                              "vec_env 'subproc' or 'ray' for several")
        env_kwargs = deep_merge(env_kwargs, {"learner": {"device": devices[0]}})
    venv = VecDUSEnv(n_envs, seed=seed, **spec_kwargs(env_id, env_kwargs))
    return VecMonitor(venv, info_keywords=venv.info_keywords())


def build_ray(env_id: str, n_envs: int, seed: int, env_kwargs: dict[str, Any],
              devices: Sequence[str] | None = None, ray: dict[str, Any] | None = None) -> VecEnv:
    """:class:`~dus_gym.envs.vector.ray_vec_env.RayVecEnv`: one Ray actor per env (``ray``: RayVecEnvConfig fields)."""
    config = from_dict(RayVecEnvConfig, ray or {}, "ray")
    # an actor with a GPU share sees only its own GPUs (Ray sets CUDA_VISIBLE_DEVICES): "cuda" is then right
    pinned = assign_devices(n_envs, devices) if devices is not None else [None] * n_envs
    factories = [partial(make_env, env_id, i, seed, env_kwargs, True, pinned[i]) for i in range(n_envs)]
    return RayVecEnv(factories, config)


def stop_vec_env(venv: VecEnv) -> None:
    """Stop the worker processes of ``venv`` at once (after Ctrl-C), instead of a graceful close.

    An interrupt can land while the parent is reading a worker's reply; a graceful close would
    then wait forever for a reply already half-read. The workers ignore Ctrl-C themselves
    (:func:`make_env`), so the parent decides when they stop.
    """
    inner = venv.unwrapped
    for process in getattr(inner, "processes", None) or []:
        process.terminate()
    for process in getattr(inner, "processes", None) or []:
        process.join(timeout=10)
    if isinstance(inner, SubprocVecEnv):
        inner.closed = True


def learner_iteration_times(venv: VecDUSEnv, iterations: int = 5, seed: int = 0,
                            rounds: int = 3) -> tuple[float, float]:
    """Seconds per iteration of ``venv``'s N learners batched, and of one of them alone on one torch thread (CPU).

    Fresh learners on the env's task and settings (the env's own are untouched, and so is torch's random
    state) take the counts that uniform random actions give, after one warm-up iteration. The two are
    timed in turn for ``rounds`` rounds and each keeps its best round, so that a burst of load from
    another process during one of them does not decide the kind.
    """
    template = venv.template
    task, config, n = template.task, template.learner_config, venv.num_envs
    space = copy.deepcopy(template.action_space)  # seeded here: the env's own space keeps its random state
    space.seed(seed)
    counts = np.stack([template.actions.to_counts(space.sample()) for _ in range(n)])
    sync = (lambda: torch.cuda.synchronize()) if torch.device(venv.learners.device).type == "cuda" else (lambda: None)

    def seconds_per_step(step: Callable[[], object]) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(iterations):
            step()
        sync()
        return (time.perf_counter() - start) / iterations

    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        batched = BatchedLearner(task, config, n)
        for i in range(n):
            batched.reset_learner(i, seed + i)
        single = Learner(task, config, seed=seed)
        batched_time = single_time = math.inf
        try:
            batched.step(counts)  # warm-ups
            torch.set_num_threads(1)  # the single learner runs as a subprocess env does
            single.step(counts[0])
            for _ in range(rounds):
                torch.set_num_threads(threads)
                batched_time = min(batched_time, seconds_per_step(lambda: batched.step(counts)))
                torch.set_num_threads(1)
                single_time = min(single_time, seconds_per_step(lambda: single.step(counts[0])))
        finally:
            torch.set_num_threads(threads)
    return batched_time, single_time


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def batched_is_faster(batched_time: float, single_time: float, n_envs: int, cores: int) -> bool:
    """Whether N learners batched in one process beat N subprocess envs, one torch thread each, on ``cores``.

    The subprocess envs' iteration is taken as ``single_time`` x ceil(N / cores) (perfect parallelism, no
    transfer cost: the estimate favours them, so the batched kind is kept only where it is surely faster).
    """
    return batched_time <= single_time * math.ceil(n_envs / max(1, min(cores, n_envs)))


def build_auto(env_id: str, n_envs: int, seed: int, env_kwargs: dict[str, Any],
               devices: Sequence[str] | None = None, ray: dict[str, Any] | None = None) -> VecEnv:
    """``vectorized`` where it is measured faster, else ``subproc``.

    Faster: the env's learners can be batched on one device, and their batched iteration beats the
    subprocess envs' on this machine's cores (:func:`batched_is_faster`), or they are on a GPU.
    """
    if devices is None or len(set(devices)) <= 1:
        try:
            venv = build_vectorized(env_id, n_envs, seed, env_kwargs, devices, ray)
        except ConfigError:  # not batchable (method, optimiser, on-disk data...): one process per env
            venv = None
        if venv is not None:
            inner = venv.unwrapped
            if torch.device(inner.learners.device).type == "cuda":
                return venv  # on a GPU one batched computation beats N processes sharing it
            batched_time, single_time = learner_iteration_times(inner)
            faster = batched_is_faster(batched_time, single_time, n_envs, usable_cores())
            logger.info("vec_env auto: %d learners batched %.2f ms per iteration, one alone %.2f ms (%d cores): %s",
                        n_envs, 1e3 * batched_time, 1e3 * single_time, usable_cores(),
                        "vectorized" if faster else "subproc")
            if faster:
                return venv
            venv.close()
    return build_subproc(env_id, n_envs, seed, env_kwargs, devices, ray)


VEC_ENVS: Registry[VecEnvBuilder] = Registry("vec_env", {
    "dummy": build_dummy, "subproc": build_subproc, "vectorized": build_vectorized, "ray": build_ray,
    "auto": build_auto,
})
"""vec_env kind -> builder ``(env_id, n_envs, seed, env_kwargs, devices, ray) -> VecEnv``."""


def build_vec_env(env_id: str, n_envs: int, seed: int, env_kwargs: dict[str, Any], kind: str,
                  devices: Sequence[str] | None = None, ray: dict[str, Any] | None = None) -> VecEnv:
    """A VecEnv of ``n_envs`` monitored DUS envs of ``kind`` (see the module docstring).

    Args:
        env_id: a registered DUS env id.
        n_envs: number of envs (learners).
        seed: env i's first episode is seeded with ``seed + i``.
        env_kwargs: overrides of the env's spec (merged key by key).
        kind: a key of :data:`VEC_ENVS`.
        devices: learner devices, round robin over the envs; None: for "subproc" see :func:`env_devices`, for
            the others the spec's device (for "ray" with a GPU share, "cuda" is the actor's own GPU).
        ray: :class:`dus_gym.envs.vector.ray_vec_env.RayVecEnvConfig` fields (kind "ray").
    """
    if kind not in VEC_ENVS:
        raise ConfigError(f"vec_env must be one of {VEC_ENVS.names()}, got '{kind}'")
    return VEC_ENVS.get(kind)(env_id, n_envs, seed, env_kwargs, devices, ray)
