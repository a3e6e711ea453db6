"""``dus-gym prepare``: raw CREMA-D / Kinetics-Sounds media -> the layout the audio-visual tasks read.

Layout written under DST::

    metadata.json          data set, classes, the pinned preprocessing choices, clip counts
    train.csv, test.csv    the published split lists (clip,label), as given
    audio/<clip>.npy       float16 features: CREMA-D 257 x 188 log spectrogram, Kinetics-Sounds 1024 x 128 fbank
    visual/<clip>/frame_0001.jpg ...   frames at 1 fps (ffmpeg)

Every file is written under a unique temporary name and renamed (:func:`dus_gym.core.files.atomic_path`),
so an interrupted run leaves no partial file and a planted file cannot redirect a write; a second run
skips the clips already done. Clip names come from the split lists, which are read from disk: a name
is a file name, never a path (:func:`check_clip_name`), so no list can make ``prepare`` write outside
DST; a clip in both lists is refused.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dus_gym.core.files import FILE_MODE, atomic_path, write_text_atomic
from dus_gym.tasks.audiovisual.features import CREMAD_AUDIO, KINETICS_AUDIO, cremad_log_spectrogram, kinetics_fbank

LAYOUT_VERSION = 1
FOLDER_MODE = 0o755
"""Permissions of prepared frame folders (the data is meant to be readable, like every written file)."""
CREMAD_CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
FPS = 1


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set's raw media are and how its audio is turned into features."""

    name: str
    audio_source: str
    """"wav": SRC/AudioWAV/<clip>.wav (CREMA-D); "video": the audio track of the video."""
    video_patterns: tuple[str, ...]
    """Candidate paths of a clip's video under SRC, with {clip} for its name."""
    audio: dict[str, Any]


DATASETS = {
    "cremad": DatasetSpec("cremad", "wav", ("VideoFlash/{clip}.flv", "VideoFlash/{clip}.mp4"), CREMAD_AUDIO),
    "kinetics-sounds": DatasetSpec("kinetics-sounds", "video",
                                   ("videos/{clip}.mp4", "videos/{clip}.mkv", "videos/{clip}.webm"), KINETICS_AUDIO),
}


def require_ffmpeg() -> str:
    """Path of ffmpeg, or one clear error saying how to install it."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise FileNotFoundError("ffmpeg not found on PATH: install it (Debian/Ubuntu: apt-get install ffmpeg; "
                                "conda: conda install ffmpeg) and run again")
    return path


def check_clip_name(clip: str, where: str) -> str:
    """``clip`` if it is a plain file name (no path separator, not ``.``/``..``, no leading dot); else a ValueError.

    Clip names become file and folder names under the data folder (``audio/<clip>.npy``,
    ``visual/<clip>/``); a name such as ``../../victim/evil`` or ``/etc/x`` would escape it.
    """
    bad = (not clip or clip.startswith(".") or "\0" in clip or "/" in clip or "\\" in clip
           or (os.sep in clip) or (os.altsep is not None and os.altsep in clip))
    if bad:
        raise ValueError(f"{where}: clip name {clip[:100]!r} is not a plain file name (no '/', '\\', '..' or "
                         "leading '.'); clip names become file names under the data folder")
    return clip


def check_disjoint(lists: dict[str, list[str]], where: str) -> None:
    """Raise a ValueError when a clip is listed in both the train and the test list."""
    both = sorted(set(lists["train"]) & set(lists["test"]))
    if both:
        raise ValueError(f"{where}: {len(both)} clip(s) are in both the train and the test list "
                         f"({', '.join(both[:5])}{', ...' if len(both) > 5 else ''}); a test clip seen in training "
                         "inflates the test accuracy: fix the lists")


def read_split_list(path: Path) -> list[tuple[str, str]]:
    """Read a split list of ``clip,label`` lines (a header line ``clip,label`` is allowed); clip names are checked."""
    if not path.is_file():
        raise FileNotFoundError(f"split list not found: {path} (expected lines 'clip,label', the published list)")
    rows = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or (i == 0 and [c.strip().lower() for c in row[:2]] in (["clip", "label"], ["name", "label"])):
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{path}, line {i + 1}: expected 'clip,label', got {row[:3]!r}")
            rows.append((check_clip_name(row[0].strip(), f"{path}, line {i + 1}"), row[1].strip()))
    if not rows:
        raise ValueError(f"split list {path} is empty")
    return rows


def split_list_text(rows: list[tuple[str, str]]) -> str:
    """The ``clip,label`` CSV text of a split list (with its header)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["clip", "label"])
    writer.writerows(rows)
    return buffer.getvalue()


def decode_audio(ffmpeg: str, source: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples of ``source`` at ``sample_rate`` (ffmpeg decodes and resamples)."""
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(source), "-vn", "-ac", "1", "-ar", str(sample_rate),
           "-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not decode the audio of {source}: {proc.stderr.decode()[-300:].strip()}")
    return np.frombuffer(proc.stdout, dtype=np.float32)


def extract_frames(ffmpeg: str, video: Path, folder: Path) -> None:
    """Frames at 1 fps as JPEG into ``folder``, through a temporary folder renamed at the end."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(video), "-vf", f"fps={FPS}", "-q:v", "2",
               str(tmp / "frame_%04d.jpg")]
        proc = subprocess.run(cmd, capture_output=True, check=False)
        if proc.returncode != 0 or not any(tmp.iterdir()):
            raise RuntimeError(f"ffmpeg could not extract frames of {video}: {proc.stderr.decode()[-300:].strip()}")
        for frame in tmp.iterdir():
            os.chmod(frame, FILE_MODE)
        os.chmod(tmp, FOLDER_MODE)  # mkdtemp makes the folder private
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """np.save through a uniquely named temporary file and a rename."""
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def clip_done(dst: Path, clip: str) -> bool:
    """True when both modalities of ``clip`` are already written."""
    return (dst / "audio" / f"{clip}.npy").is_file() and (dst / "visual" / clip).is_dir()


def find_video(spec: DatasetSpec, src: Path, clip: str) -> Path:
    """The clip's video file under ``src``."""
    for pattern in spec.video_patterns:
        path = src / pattern.format(clip=clip)
        if path.is_file():
            return path
    raise FileNotFoundError(f"video of clip '{clip}' not found under {src} (looked for {list(spec.video_patterns)})")


def prepare_clip(dataset: str, src: str, dst: str, clip: str, ffmpeg: str) -> str:
    """Preprocess one clip (both modalities); return the clip name. Runs in a worker process."""
    spec, src_path, dst_path = DATASETS[dataset], Path(src), Path(dst)
    check_clip_name(clip, "prepare")
    video = find_video(spec, src_path, clip)
    audio_path = dst_path / "audio" / f"{clip}.npy"
    if not audio_path.is_file():
        source = src_path / "AudioWAV" / f"{clip}.wav" if spec.audio_source == "wav" else video
        if not source.is_file():
            raise FileNotFoundError(f"audio of clip '{clip}' not found: {source}")
        wave = decode_audio(ffmpeg, source, spec.audio["sample_rate"])
        features = cremad_log_spectrogram(wave) if dataset == "cremad" else kinetics_fbank(wave)
        save_npy_atomic(audio_path, features.astype(np.float16))
    if not (dst_path / "visual" / clip).is_dir():
        extract_frames(ffmpeg, video, dst_path / "visual" / clip)
    return clip


def _single_thread_worker() -> None:
    """Worker processes share the cores: one torch thread each."""
    import torch

    torch.set_num_threads(1)


def prepare_dataset(dataset: str, src: str | Path, dst: str | Path, train_list: str | Path | None = None,
                    test_list: str | Path | None = None, workers: int | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Preprocess every clip of the split lists of ``dataset`` from ``src`` into ``dst``; return the metadata.

    Args:
        dataset: "cremad" or "kinetics-sounds".
        src: the raw data set (CREMA-D: AudioWAV/ and VideoFlash/; Kinetics-Sounds: videos/).
        dst: the output folder (created; clips already there are skipped).
        train_list: the published train list, ``clip,label`` lines (default SRC/train.csv).
        test_list: the published test list (default SRC/test.csv).
        workers: worker processes (default: the CPU count).
        progress: show a progress bar.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set '{dataset}'; choose among {sorted(DATASETS)}")
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"raw data folder not found: {src}")
    lists = {"train": read_split_list(Path(train_list) if train_list else src / "train.csv"),
             "test": read_split_list(Path(test_list) if test_list else src / "test.csv")}
    ffmpeg = require_ffmpeg()  # after the lists: a bad list is reported whatever the machine
    check_disjoint({split: [clip for clip, _ in rows] for split, rows in lists.items()}, f"{dataset} split lists")
    labels = sorted({label for rows in lists.values() for _, label in rows})
    if dataset == "cremad":
        unknown = sorted(set(labels) - set(CREMAD_CLASSES))
        if unknown:
            raise ValueError(f"CREMA-D labels must be among {list(CREMAD_CLASSES)}, the lists have {unknown}")
        labels = list(CREMAD_CLASSES)
    (dst / "audio").mkdir(parents=True, exist_ok=True)
    (dst / "visual").mkdir(parents=True, exist_ok=True)
    clips = sorted({clip for rows in lists.values() for clip, _ in rows})
    todo = [c for c in clips if not clip_done(dst, c)]
    # spawn, not fork: a forked child of a process whose torch thread pool already ran can deadlock
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=context,
                             initializer=_single_thread_worker) as pool:
        futures = [pool.submit(prepare_clip, dataset, str(src), str(dst), c, ffmpeg) for c in todo]
        for future in tqdm(futures, total=len(todo), desc=f"prepare {dataset}", disable=not progress):
            future.result()
    for split, rows in lists.items():
        write_text_atomic(dst / f"{split}.csv", split_list_text(rows))
    shape = [257, 188] if dataset == "cremad" else [KINETICS_AUDIO["n_frames"], KINETICS_AUDIO["n_mels"]]
    metadata = {
        "format": "dus-gym-audiovisual", "version": LAYOUT_VERSION, "dataset": dataset, "classes": labels,
        "counts": {split: len(rows) for split, rows in lists.items()},
        "visual": {"fps": FPS, "format": "jpg", "tool": "ffmpeg"},
        "audio": {**DATASETS[dataset].audio, "dtype": "float16", "shape": shape},
    }
    write_text_atomic(dst / "metadata.json", json.dumps(metadata, indent=2))
    return metadata
