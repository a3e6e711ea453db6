"""Env steps/s and peak memory of N DUS envs: the vectorised env (VecDUSEnv) against N sequential envs (DummyVecEnv).

    python benchmarks/vec_env.py                       # CPU, N = 1, 2, 4, 8, 16
    python benchmarks/vec_env.py --device cuda         # the same on a GPU

Every (kind, N) runs in a fresh process, so that its peak memory is its own: on CPU the peak
resident set size above what the process held after importing torch and building the task
(the learners' parameters, optimizer state, activations, gathered batches); on CUDA
``torch.cuda.max_memory_allocated``. Both kinds step the same env settings (the synthetic task,
K = 20 learner iterations per env step) with the same random actions; env steps/s counts every
env's steps (N per vector step), after warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np


def measure(kind: str, n_envs: int, device: str, steps: int, warmup: int, threads: int,
            task_kwargs: dict[str, Any], repeats: int, same_actions: bool = False) -> dict[str, float]:
    """Time ``steps`` vector steps of ``n_envs`` envs of ``kind`` (best of ``repeats``); return steps/s and memory."""
    import torch

    torch.set_num_threads(threads)
    from stable_baselines3.common.vec_env import DummyVecEnv

    from dus_gym.envs.env import DUSEnv
    from dus_gym.envs.vector.batched import VecDUSEnv
    from dus_gym.tasks import cached_task

    kwargs = {"n_iterations": 20 * (warmup + repeats * steps + 1), "iterations_per_step": 20,
              "learner": {"device": device}, "task_kwargs": task_kwargs}
    cached_task("synthetic", **task_kwargs)
    gpu = device.startswith("cuda")
    if gpu:
        torch.zeros(1, device=device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if kind == "vectorized":
        venv = VecDUSEnv(n_envs, seed=0, **kwargs)
    else:
        venv = DummyVecEnv([lambda: DUSEnv(**kwargs)] * n_envs)
        venv.seed(0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(warmup + steps, 1 if same_actions else n_envs, 2)).astype(np.float32)
    actions = np.repeat(actions, n_envs, axis=1) if same_actions else actions
    venv.reset()
    for a in actions[:warmup]:
        venv.step(a)
    elapsed = float("inf")
    for _ in range(repeats):  # the fastest of a few timed windows: other processes on the machine only slow it
        if gpu:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for a in actions[warmup:]:
            venv.step(a)
        if gpu:
            torch.cuda.synchronize(device)
        elapsed = min(elapsed, time.perf_counter() - start)
    if gpu:
        total = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    base = base / 2**20 if gpu else base / 1024
    return {"steps_per_s": n_envs * steps / elapsed, "peak_mib": total - base, "peak_total_mib": total}


def main() -> None:
    """Run every (kind, N) in its own process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=3, help="timed vector steps (each K = 20 iterations per env)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--same-actions", action="store_true",
                        help="every env gets the same action (equal counts: no padding in the vectorised env)")
    parser.add_argument("--repeats", type=int, default=2, help="timed windows per process (the fastest is kept)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every (kind, N) (best kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: what each subproc env gets)")
    parser.add_argument("--task-kwargs", default="{}", help='synthetic task kwargs as JSON, e.g. '
                        '\'{"dominant_dim": 64, "hidden_dim": 32}\' for a small learner')
    parser.add_argument("--one", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = measure(args.one[0], int(args.one[1]), args.device, args.steps, args.warmup, args.threads,
                         json.loads(args.task_kwargs), args.repeats, args.same_actions)
        print(json.dumps(result))
        return

    import torch

    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else (
        f"CPU, {args.threads} torch thread(s)")
    print(f"device: {name}; torch {torch.__version__}; synthetic task {args.task_kwargs} (default: dominant "
          f"1024-d, weak 16-d, MLP 128), B = 64, K = 20 iterations per env step, counts from uniform random actions "
          f"(8-256, {'the same for every env' if args.same_actions else 'per env'}), best of {args.rounds} rounds "
          f"x {args.repeats} windows of {args.steps} steps after {args.warmup} warm-up")
    memory = "peak GPU memory" if args.device.startswith("cuda") else "peak RSS"
    rows = {n: {"n": n} for n in args.n_envs}
    for _ in range(args.rounds):  # interleaved: slow phases of a shared machine hit both kinds alike
        for n in args.n_envs:
            for kind in ("sequential", "vectorized"):
                command = [sys.executable, __file__, "--one", kind, str(n), "--device", args.device,
                           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
                           "--task-kwargs", args.task_kwargs, "--repeats", str(args.repeats)]
                command += ["--same-actions"] if args.same_actions else []
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                result = json.loads(out.strip().splitlines()[-1])
                best = rows[n].get(kind)
                if best is None or result["steps_per_s"] > best["steps_per_s"]:
                    rows[n][kind] = result
            print(f"  N = {n}: sequential {rows[n]['sequential']['steps_per_s']:.2f}, "
                  f"vectorized {rows[n]['vectorized']['steps_per_s']:.2f} env steps/s", file=sys.stderr)
    rows = list(rows.values())
    print(f"\n| N | sequential env steps/s | vectorised env steps/s | ratio | sequential {memory}, MiB "
          f"(above the loaded task) | vectorised {memory}, MiB (above the loaded task) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        s, v = row["sequential"], row["vectorized"]
        ratio = v["steps_per_s"] / s["steps_per_s"]
        print(f"| {row['n']} | {s['steps_per_s']:.2f} | {v['steps_per_s']:.2f} | {ratio:.2f} "
              f"| {s['peak_total_mib']:.0f} ({s['peak_mib']:.1f}) | {v['peak_total_mib']:.0f} ({v['peak_mib']:.1f}) |")
    by_n = {row["n"]: row for row in rows}
    if 1 in by_n and 8 in by_n:
        for key, label in (("peak_total_mib", "total"), ("peak_mib", "above the loaded task")):
            one, eight = by_n[1]["vectorized"][key], by_n[8]["vectorized"][key]
            ratio = f"{eight / one:.2f}" if one > 0 else "n/a"
            print(f"vectorised {memory} {label}, 8 envs / 1 env: {ratio} ({eight:.1f} / {one:.1f} MiB)")


if __name__ == "__main__":
    main()
