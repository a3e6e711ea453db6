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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dus_gym.tasks.audiovisual.features import CREMAD_AUDIO, KINETICS_AUDIO, cremad_log_spectrogram, kinetics_fbank
from dus_gym.tasks.layout import check_clip_name, check_disjoint, write_metadata, write_split_csv
from dus_gym.tasks.media import atomic_folder, require_ffmpeg, run_ffmpeg, run_parallel, save_npy_atomic

LAYOUT_VERSION = 1
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


def decode_audio(ffmpeg: str, source: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples of ``source`` at ``sample_rate`` (ffmpeg decodes and resamples)."""
    raw = run_ffmpeg([ffmpeg, "-nostdin", "-v", "error", "-i", str(source), "-vn", "-ac", "1", "-ar", str(sample_rate),
                      "-f", "f32le", "-"], f"decode the audio of {source}")
    return np.frombuffer(raw, dtype=np.float32)


def extract_frames(ffmpeg: str, video: Path, folder: Path) -> None:
    """Frames at 1 fps as JPEG into ``folder`` (ffmpeg decodes, the folder appears complete or not at all)."""
    with atomic_folder(folder) as tmp:
        run_ffmpeg([ffmpeg, "-nostdin", "-v", "error", "-i", str(video), "-vf", f"fps={FPS}", "-q:v", "2",
                    str(tmp / "frame_%04d.jpg")], f"extract frames of {video}")
        if not any(tmp.iterdir()):
            raise RuntimeError(f"ffmpeg extracted no frame of {video}: the file is empty or corrupt")


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
    check_disjoint({split: [clip for clip, _ in rows] for split, rows in lists.items()}, f"{dataset} split lists")
    labels = sorted({label for rows in lists.values() for _, label in rows})
    if dataset == "cremad":
        unknown = sorted(set(labels) - set(CREMAD_CLASSES))
        if unknown:
            raise ValueError(f"CREMA-D labels must be among {list(CREMAD_CLASSES)}, the lists have {unknown}")
        labels = list(CREMAD_CLASSES)
    ffmpeg = require_ffmpeg()  # after the lists: a bad list is reported whatever the machine
    (dst / "audio").mkdir(parents=True, exist_ok=True)
    (dst / "visual").mkdir(parents=True, exist_ok=True)
    clips = sorted({clip for rows in lists.values() for clip, _ in rows})
    todo = [(dataset, str(src), str(dst), c, ffmpeg) for c in clips if not clip_done(dst, c)]
    run_parallel(prepare_clip, todo, workers, f"prepare {dataset}", progress)
    for split, rows in lists.items():
        write_split_csv(dst, split, ("clip", "label"), rows)
    shape = [257, 188] if dataset == "cremad" else [KINETICS_AUDIO["n_frames"], KINETICS_AUDIO["n_mels"]]
    metadata = {
        "format": "dus-gym-audiovisual", "version": LAYOUT_VERSION, "dataset": dataset, "classes": labels,
        "counts": {split: len(rows) for split, rows in lists.items()},
        "visual": {"fps": FPS, "format": "jpg", "tool": "ffmpeg"},
        "audio": {**DATASETS[dataset].audio, "dtype": "float16", "shape": shape},
    }
    write_metadata(dst, metadata)
    return metadata


def prepare_cremad(src: str | Path, dst: str | Path, train_list: str | Path | None = None,
                   test_list: str | Path | None = None, workers: int | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """``dus-gym prepare cremad``: see :func:`prepare_dataset`."""
    return prepare_dataset("cremad", src, dst, train_list, test_list, workers, progress)


def prepare_kinetics_sounds(src: str | Path, dst: str | Path, train_list: str | Path | None = None,
                            test_list: str | Path | None = None, workers: int | None = None,
                            progress: bool = True) -> dict[str, Any]:
    """``dus-gym prepare kinetics-sounds``: see :func:`prepare_dataset`."""
    return prepare_dataset("kinetics-sounds", src, dst, train_list, test_list, workers, progress)
