"""Env steps/s of the family env (the main job's) by vec-env kind, beside a raw batched PyTorch loop.

    python benchmarks/family_throughput.py                     # CPU: N = 1, 8, 16; batched, sequential, subprocess
    python benchmarks/family_throughput.py --kinds ray subproc --n-envs 2 --ray   # Ray actors against subprocesses
    python benchmarks/family_throughput.py --profile           # + where train_policy's wall time goes
    python benchmarks/family_throughput.py --device cuda       # the same on a GPU
    python benchmarks/family_throughput.py --readme docs/results/throughput.md   # also into its block

Rows, each (kind, N) in a fresh process, with the same env settings, seeds and random actions:

- ``raw``: the limit. The N stacked models of the batched env (its parameters, its vmapped forward),
  the env's counts after warm-up, fixed random sample indices, K forward + masked CE + backward +
  SGD steps (the env's momentum and weight decay) per env step; no env, data order, learning status,
  CMD, observation or validation.
- ``learner``: ``BatchedLearner.step`` with the same counts (the raw loop plus the data order,
  padding and per-learner bookkeeping).
- ``vectorized`` (batched), ``dummy`` (sequential), ``subproc`` (one process per env, one torch
  thread each), ``ray`` (one actor per env) and ``auto`` (the kind train_policy's default picks, named
  in the table): ``dus_gym.envs.vector.kinds.build_vec_env``, stepped with uniform random actions
  across episode ends (resets included).

env steps/s counts every env's steps (N per vector step); learner iterations/s = K x that. The
ratios are to the raw loop and to the sequential kind at the same N, measured in the same run.
``--profile`` runs ``train_policy`` (vectorized, the shipped PPO entry) for a few rollouts and splits
``PPO.learn``'s wall time by exclusive timers: the learners' steps, their validation, the env's own
work (CMD, counts, observation, reward), episode starts, instance draws, the policy's forward in the
rollouts, the PPO update, and the rest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dus_gym.envs.vector.kinds import usable_cores
from dus_gym.experiments.results import check_readme_block, table_header, table_row, write_readme_block

ENV_ID = "dus_gym/SyntheticFamily-v1"
KINDS = ("raw", "learner", "vectorized", "dummy", "subproc", "ray", "auto")
LABELS = {"raw": "raw batched loop", "learner": "BatchedLearner.step", "vectorized": "batched env (vectorized)",
          "dummy": "sequential env (dummy)", "subproc": "subprocess env (subproc)", "ray": "Ray actors (ray)",
          "auto": "auto (the kind it picks)"}
BLOCK = "throughput"


def env_kwargs(device: str) -> dict[str, Any]:
    """The overrides of the spec every row runs under (only the learner's device)."""
    return {"learner": {"device": device}}


def raw_loop(venv: Any, iterations: int, seed: int = 0) -> Callable[[], None]:
    """``iterations`` raw batched SGD steps on the stacked learners of ``venv`` (a VecDUSEnv), as a closure."""
    import torch
    import torch.nn.functional as F

    learners = venv.learners
    counts = np.maximum(venv.batch.episodes.counts, 1)  # (N, M): the counts of the env's last iteration
    n = torch.as_tensor(counts, device=learners.device)
    split = learners.train_split
    data, labels = split.features, split.labels
    widths = [int(counts[:, k].max()) for k in range(counts.shape[1])]
    width_p = int(counts.min(1).max())
    masks = [torch.arange(w, device=learners.device) < n[:, k : k + 1] for k, w in enumerate(widths)]
    mask_p = torch.arange(width_p, device=learners.device) < n.min(1).values[:, None]
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(len(labels), (iterations, learners.n_learners, max(widths)), generator=generator)
    index = index.to(learners.device)
    params = list(learners.params.values())
    momentum_buffers = [torch.zeros_like(p) for p in params]
    config = learners.config

    def masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(mask.shape)
        return (ce * mask).sum(1) / mask.sum(1).clamp(min=1)

    def run() -> None:
        for it in range(iterations):
            idx = index[it]
            xs = [data[m][idx[:, :w]] for m, w in zip(learners.modalities, widths, strict=True)]
            logits, fused = learners._apply(xs, masks, width_p, batched=True)
            loss = sum(masked_ce(z, labels[idx[:, : z.shape[1]]], mask) for z, mask in zip(logits, masks, strict=True))
            loss = loss + masked_ce(fused, labels[idx[:, :width_p]], mask_p)
            loss.sum().backward()
            with torch.no_grad():  # the env's SGD: weight decay, momentum
                grads = torch._foreach_add([p.grad for p in params], params, alpha=config.weight_decay)
                torch._foreach_mul_(momentum_buffers, config.momentum)
                torch._foreach_add_(momentum_buffers, grads)
                torch._foreach_add_(params, momentum_buffers, alpha=-config.lr)
            for p in params:
                p.grad = None

    return run


def measure(kind: str, n_envs: int, device: str, steps: int, warmup: int, threads: int, env_id: str,
            ray_cpus: float) -> dict[str, float]:
    """Env steps/s of ``n_envs`` envs of ``kind`` over ``steps`` vector steps after ``warmup`` (one process)."""
    import torch

    torch.set_num_threads(threads)
    import dus_gym  # noqa: F401 (registers the ids)
    from dus_gym.envs.vector.kinds import build_vec_env

    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)
    build = "vectorized" if kind in ("raw", "learner") else kind
    ray = {"num_cpus_per_env": ray_cpus, "init_kwargs": {"include_dashboard": False, "log_to_driver": False,
                                                         "configure_logging": False}} if kind == "ray" else None
    venv = build_vec_env(env_id, n_envs, 0, env_kwargs(device), build, ray=ray)
    picked = {"VecDUSEnv": "vectorized", "SubprocVecEnv": "subproc", "DummyVecEnv": "dummy"}.get(
        type(venv.unwrapped).__name__, type(venv.unwrapped).__name__)
    rng = np.random.default_rng(0)
    shape = (warmup + steps, n_envs, *venv.action_space.shape)
    actions = rng.uniform(-1, 1, size=shape).astype(np.float32)
    venv.reset()
    for a in actions[:warmup]:
        venv.step(a)
    K = int(venv.get_attr("config", [0])[0].iterations_per_step)
    if kind in ("raw", "learner"):
        inner = venv.unwrapped
        if kind == "raw":
            run = raw_loop(inner, K * steps)
        else:
            counts = inner.batch.episodes.counts.copy()

            def run() -> None:
                for _ in range(K * steps):
                    inner.learners.step(counts)
        run_once = run
    else:
        def run_once() -> None:
            for a in actions[warmup:]:
                venv.step(a)
    sync()
    start = time.perf_counter()
    run_once()
    sync()
    elapsed = time.perf_counter() - start
    venv.close()
    return {"steps_per_s": n_envs * steps / elapsed, "K": K, "picked": picked}


class Timers:
    """Exclusive wall time of wrapped methods: a call's time less that of the wrapped calls inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._inner: list[float] = []  # per open call: time spent in wrapped calls inside it

    def wrap(self, owner: type, name: str, label: str) -> None:
        """Time every call of ``owner.name`` under ``label``."""
        method = getattr(owner, name)
        timers = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            timers._inner.append(0.0)
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                timers.seconds[label] += elapsed - timers._inner.pop()
                if timers._inner:
                    timers._inner[-1] += elapsed

        setattr(owner, name, timed)


PARTS = {
    "learner step": "learner steps (forward, backward, SGD)",
    "validation": "validation (every env step)",
    "env step": "CMD, counts, observation, reward",
    "episode start": "episode starts (learner init)",
    "instance draw": "instance draws (tasks, learner rebuild)",
    "policy forward": "policy forward (rollouts)",
    "ppo update": "PPO update",
    "total": "the rest (SB3 buffers, callbacks, wrappers)",
}


def profile(env_id: str, rollouts: int, threads: int) -> dict[str, float]:
    """Shares of ``train_policy``'s wall time on the vectorized env (``rollouts`` rollouts of the shipped entry)."""
    import tempfile

    import torch

    torch.set_num_threads(threads)
    from stable_baselines3 import PPO
    from stable_baselines3.common.policies import ActorCriticPolicy

    from dus_gym.agents.hyperparams import load_hyperparams
    from dus_gym.core.batched_learner import BatchedLearner
    from dus_gym.core.episode import Episodes
    from dus_gym.core.specs import specs_dir
    from dus_gym.envs.vector.batched import BatchedEnvs
    from dus_gym.experiments.train_policy import TrainPolicyConfig, train_policy

    timers = Timers()
    for owner, name, label in ((PPO, "learn", "total"), (PPO, "train", "ppo update"),
                               (ActorCriticPolicy, "forward", "policy forward"), (Episodes, "step", "env step"),
                               (BatchedLearner, "step", "learner step"), (BatchedLearner, "scores", "validation"),
                               (BatchedEnvs, "reset", "episode start"),
                               (BatchedEnvs, "draw_instance", "instance draw")):
        timers.wrap(owner, name, label)
    hp = load_hyperparams(specs_dir("agents") / "ppo.yml", env_id)
    n_timesteps = rollouts * hp.n_envs * hp.model_kwargs["n_steps"]
    with tempfile.TemporaryDirectory() as folder:
        config = TrainPolicyConfig(env_id=env_id, vec_env="vectorized", run_dir=folder, evaluate=False,
                                   progress=False, eval_freq=0, checkpoint_freq=10**9, n_timesteps=n_timesteps)
        start = time.perf_counter()
        train_policy(config, argv=["family_throughput.py"])
        wall = time.perf_counter() - start
    total = sum(timers.seconds.values())
    return {"wall_s": wall, "learn_s": total, "n_envs": hp.n_envs, "n_timesteps": n_timesteps,
            **{PARTS[k]: timers.seconds[k] / total for k in PARTS}}


def main() -> None:
    """Run every (kind, N) in its own process; print the table (and the profile)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=ENV_ID, help=f"a registered DUS env id (default {ENV_ID})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=["raw", "learner", "vectorized", "dummy",
                                                                       "subproc"])
    parser.add_argument("--steps", type=int, default=20, help="timed vector steps (K learner iterations each)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every (kind, N) (best kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the measuring process")
    parser.add_argument("--ray-cpus-per-env", type=float, default=1.0)
    parser.add_argument("--profile", action="store_true", help="also split train_policy's wall time")
    parser.add_argument("--profile-rollouts", type=int, default=3, help="rollouts of the shipped PPO entry")
    parser.add_argument("--readme", metavar="FILE", help="also write the tables into this markdown file's block")
    parser.add_argument("--readme-block", default=BLOCK, help=f"the block's name (default {BLOCK})")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--one-profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.device, args.steps, args.warmup, args.threads,
                                 args.env, args.ray_cpus_per_env)))
        return
    if args.one_profile:
        print(json.dumps(profile(args.env, args.profile_rollouts, args.threads)))
        return

    if args.readme:
        check_readme_block(Path(args.readme), args.readme_block)
    import torch

    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else (
        f"CPU ({usable_cores()} cores), {args.threads} torch thread(s) in the measuring process")
    lines = [f"{args.env} (spec settings), {name}; torch {torch.__version__}; uniform random actions; best of "
             f"{args.rounds} interleaved rounds of {args.steps} vector steps after {args.warmup} warm-up.", ""]
    common = ["--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--threads", str(args.threads), "--env", args.env, "--ray-cpus-per-env", str(args.ray_cpus_per_env)]
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for _ in range(args.rounds):  # interleaved: a slow phase of a shared machine hits every kind alike
        for n in args.n_envs:
            for kind in args.kinds:
                command = [sys.executable, __file__, "--one", kind, str(n), *common]
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                result = json.loads(out.strip().splitlines()[-1])
                if (kind, n) not in best or result["steps_per_s"] > best[kind, n]["steps_per_s"]:
                    best[kind, n] = result
                print(f"  {kind} N = {n}: {result['steps_per_s']:.1f} env steps/s", file=sys.stderr)
    K = next(iter(best.values()))["K"]
    lines += [f"env steps/s of all N envs (learner iterations/s = {K} x that); in brackets, the ratio to the raw "
              "loop and to the sequential env at the same N", ""]
    lines += table_header(["kind", *(f"N = {n}" for n in args.n_envs)])
    for kind in args.kinds:
        cells = []
        for n in args.n_envs:
            rate = best[kind, n]["steps_per_s"]
            ratios = [f"{rate / best[ref, n]['steps_per_s']:.2f}x {label}" for ref, label in
                      (("raw", "raw"), ("dummy", "seq")) if ref in args.kinds and ref != kind]
            ratios += [best[kind, n]["picked"]] if kind == "auto" else []
            cells.append(f"{rate:.1f}" + (f" ({', '.join(ratios)})" if ratios else ""))
        lines.append(table_row([LABELS[kind], *cells]))
    if "ray" in args.kinds and "subproc" in args.kinds:
        lines += ["", *(f"Ray actors / subprocesses, N = {n}: "
                        f"{best['ray', n]['steps_per_s'] / best['subproc', n]['steps_per_s']:.2f}"
                        for n in args.n_envs)]
    if args.profile:
        command = [sys.executable, __file__, "--one-profile", "--profile-rollouts", str(args.profile_rollouts), *common]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        shares = json.loads(out.strip().splitlines()[-1])
        lines += ["", f"train_policy on {args.env}: vectorized, N = {shares.pop('n_envs')}, "
                      f"{shares.pop('n_timesteps')} env steps; PPO.learn {shares.pop('learn_s'):.1f} s of "
                      f"{shares.pop('wall_s'):.1f} s:", ""]
        lines += table_header(["part of PPO.learn", "share of its wall time"])
        lines += [table_row([part, f"{100 * share:.1f} %"]) for part, share in shares.items()]
    table = "\n".join(lines)
    print("\n" + table)
    if args.readme:
        write_readme_block(Path(args.readme), args.readme_block, table,
                           "python benchmarks/family_throughput.py " + " ".join(sys.argv[1:]))
        print(f"written into {args.readme} (block {args.readme_block})")


if __name__ == "__main__":
    main()
