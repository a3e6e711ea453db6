"""Samples/s of the DUS learner's iteration against a minimal hand-written PyTorch loop, same model.

    python benchmarks/learner_throughput.py                       # CREMA-D shapes, random tensors
    python benchmarks/learner_throughput.py --device cuda --precision bf16 --channels-last
    python benchmarks/learner_throughput.py --root data/cremad    # also time the loader on real data

Both loops train the same ResNet-18 pair (audio 1 x 257 x 188 spectrogram, visual T x 3 x S x S)
in the same process, on the same device and settings; the table gives samples/s (audio + visual
samples per second) for equal and unequal counts, the ratio learner / raw loop, and the cost of
count quantisation (random counts every iteration, quantised to a few sizes or not). A second table
gives the DataLoader throughput from a prepared layout (a generated one when --root is not given).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dus_gym.core.config import LearnerConfig
from dus_gym.core.learner import Learner
from dus_gym.core.model import MultimodalNet
from dus_gym.core.task import MultimodalSplit, Task
from dus_gym.tasks.resnet import AudioResNetEncoder, VisualResNetEncoder


def random_task(n: int, frames: int, image_size: int) -> Task:
    """CREMA-D shapes with random content (6 classes)."""
    g = torch.Generator().manual_seed(0)

    def split() -> MultimodalSplit:
        return MultimodalSplit({"audio": torch.randn(n, 1, 257, 188, generator=g),
                                "visual": torch.randn(n, frames, 3, image_size, image_size, generator=g)},
                               torch.randint(0, 6, (n,), generator=g))

    return Task("cremad-shapes", ("audio", "visual"), 6, {"train": split(), "val": split(), "test": split()},
                {"audio": AudioResNetEncoder, "visual": VisualResNetEncoder})


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings need it on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_learner(learner: Learner, schedule: list[tuple[int, int]], warmup: int) -> float:
    """Samples/s of learner.step over ``schedule`` after ``warmup`` iterations."""
    for counts in schedule[:warmup]:
        learner.step(counts)
    sync(learner.device)
    start = time.perf_counter()
    samples = 0
    for counts in schedule[warmup:]:
        samples += int(sum(learner.step(counts).counts))
    sync(learner.device)
    return samples / (time.perf_counter() - start)


def time_raw_loop(model: MultimodalNet, data: MultimodalSplit, config: LearnerConfig, device: torch.device,
                  schedule: list[tuple[int, int]], warmup: int) -> float:
    """The same iteration written plainly: random batches already on the device, no batch plan, no CMD."""
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    x_audio, x_visual, y = data.features["audio"], data.features["visual"], data.labels
    g = torch.Generator(device="cpu").manual_seed(1)
    bf16 = config.precision == "bf16"
    samples = 0
    for i, (n_audio, n_visual) in enumerate(schedule):
        if i == warmup:
            sync(device)
            start, samples = time.perf_counter(), 0
        index = torch.randperm(len(y), generator=g)[: max(n_audio, n_visual)].to(device)
        a, v = x_audio[index[:n_audio]], x_visual[index[:n_visual]]
        if config.channels_last:
            a = a.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            fa, fv = model.encoders["audio"](a), model.encoders["visual"](v)
            n = min(n_audio, n_visual)
            loss = (F.cross_entropy(model.heads["audio"](fa).float(), y[index[:n_audio]]) * n_audio / config.batch_size
                    + F.cross_entropy(model.heads["visual"](fv).float(), y[index[:n_visual]]) * n_visual
                    / config.batch_size
                    + F.cross_entropy(model.fusion(torch.cat([fa[:n], fv[:n]], 1)).float(), y[index[:n]]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        samples += n_audio + n_visual
    sync(device)
    return samples / (time.perf_counter() - start)


def loader_throughput(root: Path, workers: int, batch: int, image_size: int) -> float:
    """Samples/s of the prefetching loader reading a prepared layout."""
    from dus_gym.tasks import make_task

    task = make_task("cremad", root=str(root), image_size=image_size)
    learner_config = LearnerConfig(batch_size=batch, num_workers=workers)
    from dus_gym.core.batch_plan import BatchPlanner
    from dus_gym.core.loader import WindowLoader

    planner = BatchPlanner(len(task.splits["train"]), torch.Generator().manual_seed(0))
    window_loader = WindowLoader(task.splits["train"], planner, learner_config.num_workers, pin_memory=False)
    take = (lambda window: window_loader.take(window)) if workers > 0 else (
        lambda window: {m: [x[window]] for m, x in task.splits["train"].features.items()})
    take(planner.plan([batch, batch]).window)  # start-up
    start, samples = time.perf_counter(), 0
    for _ in range(8):
        take(planner.plan([batch, batch]).window)
        samples += batch
    return samples / (time.perf_counter() - start)


def fake_prepared_layout(root: Path, n: int) -> Path:
    """A prepared CREMA-D layout with random spectrograms and JPEG frames (for loader timing only)."""
    import json

    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True)
    rows = []
    for i in range(n):
        clip = f"{1000 + i}_BENCH_NEU_XX"
        np.save(root / "audio" / f"{clip}.npy", rng.standard_normal((257, 188)).astype(np.float16))
        (root / "visual" / clip).mkdir(parents=True)
        for f in range(3):
            Image.fromarray(rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)).save(
                root / "visual" / clip / f"frame_{f + 1:04d}.jpg")
        rows.append(f"{clip},{['NEU', 'HAP', 'SAD', 'FEA', 'DIS', 'ANG'][i % 6]}\n")
    (root / "train.csv").write_text("clip,label\n" + "".join(rows))
    (root / "test.csv").write_text("clip,label\n" + "".join(rows[:12]))
    (root / "metadata.json").write_text(json.dumps({"format": "dus-gym-audiovisual", "version": 1,
                                                    "dataset": "cremad",
                                                    "classes": ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]}))
    return root


def main() -> None:
    """Parse the flags, run both loops and the loader, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                        help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--batch", type=int, default=None, help="B (default 64 on CUDA, 8 on CPU)")
    parser.add_argument("--image-size", type=int, default=None, help="default 224 on CUDA, 64 on CPU")
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations (default 50 CUDA, 6 CPU)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats per loop (best is kept)")
    parser.add_argument("--root", help="a prepared CREMA-D folder for the loader table")
    parser.add_argument("--loader-clips", type=int, default=96)
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    B = args.batch or (64 if gpu else 8)
    size = args.image_size or (224 if gpu else 64)
    iterations = args.iterations or (50 if gpu else 6)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    precision = args.precision or ("bf16" if gpu else "fp32")
    task = random_task(4 * B, args.frames, size)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; B = {B}; visual {args.frames} x 3 x {size} x {size}; "
          f"audio 1 x 257 x 188; {precision}; channels_last {args.channels_last}; compile {args.compile}")

    rng = np.random.default_rng(0)
    random_counts = [tuple(int(c) for c in rng.integers(B // 4, 2 * B + 1, size=2)) for _ in range(warmup + iterations)]
    schedules = {
        f"equal {B} + {B}": [(B, B)] * (warmup + iterations),
        f"unequal {B} + {B // 2}": [(B, B // 2)] * (warmup + iterations),
    }
    rows = []
    for label, schedule in schedules.items():
        config = LearnerConfig(batch_size=B, lr=0.01, precision=precision, channels_last=args.channels_last,
                               compile=args.compile, device=str(device), eval_batch_size=B)
        learner = Learner(task, config, seed=0)
        raw_model = copy.deepcopy(learner.model)
        raw_data = task.splits["train"].to(device)
        learner_rates, raw_rates = [], []
        for _ in range(args.repeats):  # interleaved, best of each: order and warm-up effects cancel
            learner_rates.append(time_learner(learner, schedule, warmup))
            raw_rates.append(time_raw_loop(raw_model, raw_data, config, device, schedule, warmup))
        rows.append((label, max(learner_rates), max(raw_rates)))
        del learner, raw_model
    sizes = sorted({B // 4, B // 2, 3 * B // 4, B, 3 * B // 2, 2 * B})
    for label, sizes_option in ((f"random counts {B // 4}-{2 * B}, exact", None),
                                (f"random counts, quantised to {sizes}", tuple(sizes))):
        config = LearnerConfig(batch_size=B, lr=0.01, precision=precision, channels_last=args.channels_last,
                               compile=args.compile, device=str(device), count_sizes=sizes_option)
        rows.append((label, time_learner(Learner(task, config, seed=0), random_counts, warmup), float("nan")))

    print("\n| counts | learner samples/s | raw loop samples/s | ratio |")
    print("|---|---|---|---|")
    for label, learner_rate, raw_rate in rows:
        ratio = f"{learner_rate / raw_rate:.3f}" if np.isfinite(raw_rate) else "—"
        raw = f"{raw_rate:.1f}" if np.isfinite(raw_rate) else "—"
        print(f"| {label} | {learner_rate:.1f} | {raw} | {ratio} |")
    exact, quantised = rows[-2][1], rows[-1][1]
    print(f"\nquantised / exact counts: {quantised / exact:.3f} (samples/s; quantisation rounds counts up)")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else fake_prepared_layout(Path(tmp) / "cremad", args.loader_clips)
        print(f"\nloader from {'the prepared layout ' + str(root) if args.root else 'a generated layout'} "
              f"(audio .npy + JPEG frames resized to {size}), batch {B} of each modality:")
        print("| workers | samples/s |")
        print("|---|---|")
        for workers in sorted({0, 2, max(2, torch.get_num_threads())}):
            print(f"| {workers} | {loader_throughput(root, workers, B, size):.1f} |")


if __name__ == "__main__":
    main()
