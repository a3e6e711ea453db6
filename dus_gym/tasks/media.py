"""What every ``dus-gym prepare`` shares: ffmpeg, atomic files and folders, JPEG frames, parallel workers.

Each data set's preparation (audio-visual, image-text, gesture) turns raw media into a layout of
small files; these helpers make that resumable and safe: a file or a folder of frames appears
under its final name only once it is complete (written under a temporary name, then renamed),
so an interrupted run leaves nothing half-written and a second run skips what is done.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dus_gym.core.extras import require
from dus_gym.core.files import FILE_MODE, atomic_path

JPEG_QUALITY = 95
FOLDER_MODE = 0o755
"""Permissions of prepared folders (the data is meant to be readable, like every written file)."""
"""Quality of every JPEG written by ``prepare`` (Pillow's scale; 95 keeps compression artefacts small)."""


def find_ffmpeg() -> str | None:
    """Path of ffmpeg: the system's (on PATH) if there is one, else the static binary of the imageio-ffmpeg wheel."""
    path = shutil.which("ffmpeg")
    if path is not None:
        return path
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # the wheel has no binary for this platform
        return None


def require_ffmpeg() -> str:
    """Path of ffmpeg (:func:`find_ffmpeg`), or one clear error saying how to install it."""
    path = find_ffmpeg()
    if path is None:
        raise FileNotFoundError("ffmpeg not found: pip install \"dus-gym[av]\" (its imageio-ffmpeg wheel holds a "
                                "static ffmpeg), or install a system ffmpeg (apt-get install ffmpeg), and run again")
    return path


def run_ffmpeg(args: Sequence[str], what: str) -> bytes:
    """Run ``ffmpeg args`` and return its standard output; a failure names ``what`` and ffmpeg's message."""
    proc = subprocess.run([*args], capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not {what}: {proc.stderr.decode(errors='replace')[-300:].strip()}")
    return proc.stdout


def decode_video(ffmpeg: str, video: Path, size: int, gray: bool = False) -> np.ndarray:
    """Every frame of ``video`` resized to ``size`` x ``size`` (bilinear): (T, S, S, 3) uint8, or (T, S, S) gray."""
    if not video.is_file():
        raise FileNotFoundError(f"video not found: {video}")
    pix_fmt, channels = ("gray", 1) if gray else ("rgb24", 3)
    raw = run_ffmpeg([ffmpeg, "-nostdin", "-v", "error", "-i", str(video), "-vf", f"scale={size}:{size}:flags=bilinear",
                      "-f", "rawvideo", "-pix_fmt", pix_fmt, "-"], f"decode the frames of {video}")
    frame_bytes = size * size * channels
    if len(raw) < frame_bytes:
        raise RuntimeError(f"ffmpeg decoded no frame of {video}: the file is empty or corrupt")
    frames = np.frombuffer(raw[: len(raw) - len(raw) % frame_bytes], dtype=np.uint8)
    return frames.reshape(-1, size, size) if gray else frames.reshape(-1, size, size, 3)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def save_jpeg(path: Path, pixels: np.ndarray) -> None:
    """Write a (H, W, 3) or (H, W) uint8 array as a JPEG of quality :data:`JPEG_QUALITY`."""
    Image = require("PIL.Image", "av", "the prepared frames")  # noqa: N806

    Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="JPEG", quality=JPEG_QUALITY)


@contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``folder``; on success it is renamed to ``folder``, on failure removed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield tmp
        for item in tmp.iterdir():
            os.chmod(item, FILE_MODE)
        os.chmod(tmp, FOLDER_MODE)  # mkdtemp makes the folder private; prepared data is meant to be readable
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_frames(folder: Path, frames: np.ndarray, prefix: str = "frame") -> None:
    """Frames (T, H, W[, 3]) uint8 as ``folder/<prefix>_0001.jpg ...``, the whole folder appearing at once."""
    with atomic_folder(folder) as tmp:
        for i, frame in enumerate(frames, start=1):
            save_jpeg(tmp / f"{prefix}_{i:04d}.jpg", frame)


def _single_thread_worker() -> None:
    """Worker processes share the cores: one torch thread each."""
    import torch

    torch.set_num_threads(1)


def run_parallel(function: Callable[..., Any], jobs: Sequence[tuple], workers: int | None, desc: str,
                 progress: bool = True) -> list[Any]:
    """``function(*job)`` for every job in spawned worker processes, with a progress bar; results in job order.

    The first job that raises stops the rest (pending jobs are cancelled) and its error is raised
    here. ``function`` must be importable by the workers (a module-level function). With
    ``workers=1`` the jobs run one after the other in this process (no process start-up).
    """
    if not jobs:
        return []
    if workers == 1:
        return [function(*job) for job in tqdm(jobs, desc=desc, disable=not progress)]
    # spawn, not fork: a forked child of a process whose torch thread pool already ran can deadlock
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers or os.cpu_count() or 1, len(jobs)), mp_context=context,
                               initializer=_single_thread_worker)
    try:
        futures = [pool.submit(function, *job) for job in jobs]
        results = [future.result() for future in tqdm(futures, total=len(jobs), desc=desc, disable=not progress)]
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results
