"""The GPU numbers in one command: learner throughput, the vectorised env on CUDA, a short bench; one table.

    python benchmarks/gpu_suite.py                         # prints the table, writes runs/gpu-suite.md
    python benchmarks/gpu_suite.py --readme docs/results/gpu.md   # also writes it into that page's gpu-suite block

It runs, each in its own process with a time limit (90 + 120 + 120 + 120 s: at most 7.5 minutes in all,
about 6 expected on one H100):

1. ``benchmarks/learner_throughput.py --device cuda --precision bf16 --channels-last``: the learner's
   iteration against a hand-written loop over the same ResNet-18 pair (CREMA-D shapes, B = 64,
   224 x 224 frames), equal and unequal counts, count quantisation, the loader; then the same with
   ``--compile`` (torch.compile of the encoders);
2. ``benchmarks/vec_env.py --device cuda --n-envs 8 16 64``: the vectorised env against N separate
   learners, env steps/s and peak GPU memory;
3. ``dus-gym bench --tasks synthetic mfeat --seeds 0 --iterations 200 --set learner.device=cuda``:
   every method with uniform and heuristic sampling (and each modality alone) on the GPU.

and writes one markdown table: the device, the versions (dus-gym, Python, torch, CUDA, cuDNN,
driver) and every number. A part that fails or runs out of time is a row saying so (exit code 1);
on a machine without a CUDA GPU it says so in one line and exits with 2.
"""

from __future__ import annotations

import argparse
import csv
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import dus_gym
from dus_gym.core.files import write_text_atomic
from dus_gym.experiments.results import check_readme_block, write_readme_block

HERE = Path(__file__).resolve().parent
README_BLOCK = "gpu-suite"


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in ``text``, each as a list of rows keyed by the header cells."""
    tables, lines = [], [line.strip() for line in text.splitlines()]
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1]):
            header = [cell.strip() for cell in lines[i].strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [cell.strip() for cell in lines[i].strip("|").split("|")]
                rows.append(dict(zip(header, cells, strict=False)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def throughput_rows(setting: str, output: str) -> list[tuple[str, str, str, str]]:
    """Rows of learner_throughput.py's output: samples/s of the learner and the raw loop, their ratio, the loader."""
    tables = markdown_tables(output)
    if not tables:
        raise ValueError("learner_throughput.py printed no table")
    rows = []
    for row in tables[0]:
        counts = row["counts"]
        rows.append(("learner_throughput", setting, f"{counts}: learner samples/s", row["learner samples/s"]))
        if row["raw loop samples/s"] != "—":
            rows.append(("learner_throughput", setting, f"{counts}: raw loop samples/s", row["raw loop samples/s"]))
            rows.append(("learner_throughput", setting, f"{counts}: learner / raw loop", row["ratio"]))
    match = re.search(r"quantised / exact counts: ([0-9.]+)", output)
    if match:
        rows.append(("learner_throughput", setting, "quantised / exact counts (samples/s)", match.group(1)))
    for row in tables[1] if len(tables) > 1 else []:
        rows.append(("learner_throughput", setting, f"loader, {row['workers']} workers: samples/s", row["samples/s"]))
    return rows


def vec_env_rows(output: str) -> list[tuple[str, str, str, str]]:
    """Rows of vec_env.py's output: env steps/s of both kinds, their ratio and peak GPU memory, per N."""
    tables = markdown_tables(output)
    if not tables:
        raise ValueError("vec_env.py printed no table")
    rows = []
    for row in tables[0]:
        memory = [key for key in row if "MiB" in key]
        setting = f"N = {row['N']}"
        rows.append(("vec_env", setting, "sequential env steps/s", row["sequential env steps/s"]))
        rows.append(("vec_env", setting, "vectorised env steps/s", row["vectorised env steps/s"]))
        rows.append(("vec_env", setting, "vectorised / sequential", row["ratio"]))
        for key in memory:
            rows.append(("vec_env", setting, key.replace(" (above the loaded task)", ""), row[key].split(" ")[0]))
    return rows


def bench_rows(results_csv: Path) -> list[tuple[str, str, str, str]]:
    """Rows of a bench's results.csv: per task, mean training seconds per run; per cell, fused test accuracy."""
    with open(results_csv, newline="") as f:
        records = list(csv.DictReader(f))
    if not records:
        raise ValueError(f"{results_csv} holds no cell")
    seconds: dict[str, list[float]] = defaultdict(list)
    accuracy: dict[tuple[str, str], list[float]] = defaultdict(list)
    diverged: dict[tuple[str, str], int] = defaultdict(int)
    for record in records:
        cell = (record["task"], f"{record['method']}, {record['sampler']}")
        if record.get("diverged"):
            diverged[cell] += 1
            continue
        seconds[record["task"]].append(float(record["train_seconds"]))
        if record["method"] != "alone":  # the alone cells have no fused head
            accuracy[cell].append(float(record["fused_acc"]))
    rows = [("bench", task, "training s per run (mean)", f"{sum(s) / len(s):.2f}") for task, s in seconds.items()]
    for (task, cell), values in accuracy.items():
        rows.append(("bench", f"{task}, {cell}", "fused test acc %", f"{100 * sum(values) / len(values):.1f}"))
    rows += [("bench", f"{task}, {cell}", "diverged runs", str(n)) for (task, cell), n in diverged.items()]
    return rows


def environment_rows() -> list[tuple[str, str, str, str]]:
    """The device and the versions."""
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                            text=True, check=False).stdout.strip().splitlines()
    cudnn = torch.backends.cudnn.version()
    return [
        ("device", "—", "GPU", torch.cuda.get_device_name(0)),
        ("device", "—", "GPU memory, GiB", f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f}"),
        ("versions", "—", "dus-gym / Python", f"{dus_gym.__version__} / {platform.python_version()}"),
        ("versions", "—", "torch / CUDA / cuDNN", f"{torch.__version__} / {torch.version.cuda} / {cudnn}"),
        ("versions", "—", "NVIDIA driver", driver[0] if driver else "unknown"),
    ]


def run_part(command: list[str], timeout: float) -> tuple[str, str | None]:
    """Run one part: (its standard output, None), or (its output so far, why it failed)."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        partial = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        return partial, f"ran past its {timeout:.0f} s limit"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return proc.stdout, f"exit code {proc.returncode}: {last[:200]}"
    return proc.stdout, None


def render(rows: list[tuple[str, str, str, str]]) -> str:
    """The one markdown table."""
    lines = ["| part | setting | quantity | value |", "|---|---|---|---|"]
    lines += [f"| {part} | {setting} | {quantity} | {value} |" for part, setting, quantity, value in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Check for a GPU, run the parts, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu-suite.md", help="markdown file written (default runs/gpu-suite.md)")
    parser.add_argument("--readme", metavar="FILE",
                        help="also write the table into this file's gpu-suite block (docs/results/gpu.md)")
    parser.add_argument("--limit-scale", type=float, default=1.0,
                        help="multiply every part's time limit (90, 120, 120, 120 s) by this (a slower GPU)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu_suite: needs a CUDA GPU and torch {torch.__version__} sees none here: run it on a GPU machine "
              "(with a CUDA build of torch)", file=sys.stderr)
        return 2
    if args.readme:
        check_readme_block(Path(args.readme), README_BLOCK)
    start = time.perf_counter()
    rows = environment_rows()
    failed = False
    python = sys.executable
    parts = [
        ("learner_throughput", "bf16, channels_last", 90.0,
         [python, str(HERE / "learner_throughput.py"), "--device", "cuda", "--precision", "bf16", "--channels-last"],
         throughput_rows),
        ("learner_throughput", "bf16, channels_last, compile", 120.0,
         [python, str(HERE / "learner_throughput.py"), "--device", "cuda", "--precision", "bf16", "--channels-last",
          "--compile", "--iterations", "30"], throughput_rows),
        ("vec_env", "N = 8, 16, 64", 120.0,
         [python, str(HERE / "vec_env.py"), "--device", "cuda", "--n-envs", "8", "16", "64", "--rounds", "1"],
         lambda setting, output: vec_env_rows(output)),
    ]
    for part, setting, limit, command, parse in parts:
        t = time.perf_counter()
        output, error = run_part(command, limit * args.limit_scale)
        try:
            if error:
                raise ValueError(error)
            rows += parse(setting, output)
            rows.append((part, setting, "wall s", f"{time.perf_counter() - t:.0f}"))
        except (ValueError, KeyError) as err:
            failed = True
            rows.append((part, setting, "failed", str(err).replace("|", "/")))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        command = [python, "-m", "dus_gym", "bench", "--tasks", "synthetic", "mfeat", "--seeds", "0", "--iterations",
                   "200", "--set", "learner.device=cuda", "--workers", "1", "--out", tmp, "--no-progress"]
        _, error = run_part(command, 120.0 * args.limit_scale)
        try:
            if error:
                raise ValueError(error)
            rows += bench_rows(Path(tmp) / "results.csv")
            rows.append(("bench", "synthetic + mfeat, 200 iterations, seed 0", "wall s",
                         f"{time.perf_counter() - t:.0f}"))
        except (ValueError, KeyError, OSError) as err:
            failed = True
            rows.append(("bench", "synthetic + mfeat", "failed", str(err).replace("|", "/")))
    rows.append(("suite", "—", "wall minutes", f"{(time.perf_counter() - start) / 60:.1f}"))
    table = render(rows)
    print(table)
    write_text_atomic(args.out, table + "\n")
    if args.readme:
        write_readme_block(Path(args.readme), README_BLOCK, table, "python benchmarks/gpu_suite.py " +
                           " ".join(argv if argv is not None else sys.argv[1:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
