"""CREMA-D and Kinetics-Sounds tasks over the layout written by ``dus-gym prepare`` (:mod:`.prepare`).

The clips stay on disk: each modality is a lazy source that loads the clips a batch asks for
(audio features from ``audio/<clip>.npy``, frames from ``visual/<clip>/``).
"""

from __future__ import annotations

import copy
import csv
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from dus_gym.tasks.audiovisual.prepare import check_clip_name, check_disjoint
from dus_gym.tasks.base import MultimodalSplit, Task
from dus_gym.tasks.resnet import AudioResNetEncoder, VisualResNetEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUT = ("metadata.json, train.csv, test.csv, audio/<clip>.npy and visual/<clip>/frame_*.jpg "
          "(run 'dus-gym prepare {dataset} SRC DST')")


def _as_index(index: torch.Tensor | np.ndarray | slice | Sequence[int] | int, n: int) -> np.ndarray:
    if isinstance(index, slice):
        return np.arange(n)[index]
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    return np.atleast_1d(np.asarray(index, dtype=np.int64))


class ClipSource(ABC):
    """A lazy modality: indexing with integers, an index tensor or a slice loads those clips.

    Args:
        root: the prepared data folder.
        clips: clip names, in sample order.
    """

    def __init__(self, root: Path, clips: Sequence[str]) -> None:
        self.root = Path(root)
        self.clips = list(clips)

    def __len__(self) -> int:
        return len(self.clips)

    def subset(self, index: torch.Tensor | np.ndarray) -> ClipSource:
        """The same source over the clips at ``index`` (nothing is loaded)."""
        clone = copy.copy(self)
        clone.clips = [self.clips[i] for i in _as_index(index, len(self))]
        return clone

    def to(self, device: torch.device | str) -> ClipSource:
        """Clips are moved batch by batch, so the source itself stays where it is."""
        return self

    @abstractmethod
    def load(self, clip: str) -> torch.Tensor:
        """One clip's tensor."""

    def __getitem__(self, index: torch.Tensor | np.ndarray | slice | Sequence[int]) -> torch.Tensor:
        return torch.stack([self.load(self.clips[i]) for i in _as_index(index, len(self))])


class AudioClips(ClipSource):
    """Audio features of each clip, (1, F, T) float32."""

    def load(self, clip: str) -> torch.Tensor:
        """Read ``audio/<clip>.npy``; NaN/inf in the features is an error that names the clip."""
        path = self.root / "audio" / f"{clip}.npy"
        try:
            features = np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"audio features {path} are unreadable ({err}); rerun 'dus-gym prepare'") from err
        if not np.isfinite(features).all():
            raise ValueError(f"audio features {path} hold NaN/inf; rerun 'dus-gym prepare' for clip '{clip}'")
        return torch.from_numpy(features).unsqueeze(0)


class VisualClips(ClipSource):
    """``n_frames`` evenly spaced frames of each clip, resized, ImageNet-normalised: (T, 3, S, S).

    Args:
        root: the prepared data folder.
        clips: clip names.
        n_frames: frames per clip T.
        image_size: side S of the square frames.
    """

    def __init__(self, root: Path, clips: Sequence[str], n_frames: int = 1, image_size: int = 224) -> None:
        super().__init__(root, clips)
        self.n_frames = n_frames
        self.image_size = image_size
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def load(self, clip: str) -> torch.Tensor:
        """Read, resize and normalise the clip's frames."""
        from PIL import Image

        frames = sorted((self.root / "visual" / clip).glob("frame_*.jpg"))
        if not frames:
            raise FileNotFoundError(f"no frames in {self.root / 'visual' / clip}")
        picks = np.linspace(0, len(frames) - 1, self.n_frames).round().astype(int)
        images = []
        for i in picks:
            with Image.open(frames[i]) as image:
                image = image.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
                array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
            images.append((array.float() / 255.0 - self.mean) / self.std)
        return torch.stack(images)


def check_layout(root: Path, dataset: str) -> dict:
    """Read ``metadata.json`` and check that every listed clip is there; one clear error otherwise."""
    layout = LAYOUT.format(dataset=dataset)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} data root not found: {root}; expected {layout}")
    try:
        metadata = json.loads((root / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileNotFoundError(f"{root / 'metadata.json'} is missing or unreadable; expected {layout}") from err
    if not isinstance(metadata, dict) or metadata.get("format") != "dus-gym-audiovisual" \
            or metadata.get("dataset") != dataset:
        found = metadata.get("dataset") if isinstance(metadata, dict) else None
        raise ValueError(f"{root} holds '{found}' data, not '{dataset}'; expected {layout}")
    classes = metadata.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes) \
            or len(set(classes)) != len(classes):
        raise ValueError(f"{root / 'metadata.json'} lacks 'classes' (a list of at least 2 distinct class names); "
                         f"rerun 'dus-gym prepare {dataset}'")
    for split in ("train", "test"):
        if not (root / f"{split}.csv").is_file():
            raise FileNotFoundError(f"{root / f'{split}.csv'} is missing; expected {layout}")
    return metadata


def read_list(root: Path, split: str, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Clip names and class indices of a prepared split list, checking every clip's files."""
    index = {c: i for i, c in enumerate(classes)}
    clips, labels = [], []
    path = root / f"{split}.csv"
    with open(path, newline="") as f:
        for line, row in enumerate(list(csv.reader(f))[1:], start=2):
            if len(row) < 2:
                raise ValueError(f"{path}, line {line}: expected 'clip,label', got {row[:3]!r}; "
                                 "rerun 'dus-gym prepare'")
            clip, label = check_clip_name(row[0], f"{path}, line {line}"), row[1]
            if label not in index:
                raise ValueError(f"{root / f'{split}.csv'}: label '{label}' is not among {list(classes)}")
            if not (root / "audio" / f"{clip}.npy").is_file() or not (root / "visual" / clip).is_dir():
                raise FileNotFoundError(f"clip '{clip}' of {split}.csv is incomplete under {root} (audio/{clip}.npy "
                                        f"or visual/{clip}/ missing): rerun 'dus-gym prepare' to finish it")
            clips.append(clip)
            labels.append(index[label])
    if not clips:
        raise ValueError(f"{root / f'{split}.csv'} lists no clips; rerun 'dus-gym prepare'")
    return clips, np.asarray(labels, dtype=np.int64)


def make_audiovisual(
    dataset: str,
    root: str,
    n_frames: int = 1,
    image_size: int = 224,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> Task:
    """Build an audio-visual task from a prepared folder; validation is a seeded slice of train.

    Args:
        dataset: "cremad" or "kinetics-sounds".
        root: the folder written by ``dus-gym prepare``.
        n_frames: frames per clip for the visual encoder.
        image_size: frames are resized to image_size x image_size.
        val_fraction: share of the train list held out as the validation split.
        split_seed: seed of that hold-out.
    """
    root_path = Path(root).expanduser()
    metadata = check_layout(root_path, dataset)
    classes = metadata["classes"]
    train_clips, train_labels = read_list(root_path, "train", classes)
    test_clips, test_labels = read_list(root_path, "test", classes)
    check_disjoint({"train": train_clips, "test": test_clips}, f"{root_path} (train.csv, test.csv)")
    positions = np.arange(len(train_clips))
    try:
        fit, val = train_test_split(positions, test_size=val_fraction, stratify=train_labels, random_state=split_seed)
    except ValueError:  # too few clips of a class to stratify (tiny data sets): plain seeded split
        fit, val = train_test_split(positions, test_size=val_fraction, random_state=split_seed)

    def split(clips: list[str], labels: np.ndarray) -> MultimodalSplit:
        return MultimodalSplit({"audio": AudioClips(root_path, clips),
                                "visual": VisualClips(root_path, clips, n_frames, image_size)},
                               torch.from_numpy(labels))

    splits = {
        "train": split([train_clips[i] for i in np.sort(fit)], train_labels[np.sort(fit)]),
        "val": split([train_clips[i] for i in np.sort(val)], train_labels[np.sort(val)]),
        "test": split(test_clips, test_labels),
    }
    return Task(name=dataset, modalities=("audio", "visual"), n_classes=len(classes), splits=splits,
                encoders={"audio": AudioResNetEncoder, "visual": VisualResNetEncoder},
                metadata={"root": str(root_path), "classes": classes, "preprocessing": metadata})


def make_cremad(root: str, n_frames: int = 1, image_size: int = 224, val_fraction: float = 0.1,
                split_seed: int = 0) -> Task:
    """CREMA-D (6 emotions) from a folder written by ``dus-gym prepare cremad`` (see :func:`make_audiovisual`)."""
    return make_audiovisual("cremad", root, n_frames, image_size, val_fraction, split_seed)


def make_kinetics_sounds(root: str, n_frames: int = 1, image_size: int = 224, val_fraction: float = 0.1,
                         split_seed: int = 0) -> Task:
    """Kinetics-Sounds (31 classes) from a folder written by ``dus-gym prepare kinetics-sounds``."""
    return make_audiovisual("kinetics-sounds", root, n_frames, image_size, val_fraction, split_seed)
