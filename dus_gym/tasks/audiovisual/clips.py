"""CREMA-D and Kinetics-Sounds tasks over the layout written by ``dus-gym prepare`` (:mod:`.prepare`).

The clips stay on disk: each modality is a lazy source that loads the clips a batch asks for
(audio features from ``audio/<clip>.npy``, frames from ``visual/<clip>/``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dus_gym.core.task import MultimodalSplit, Task
from dus_gym.tasks.layout import check_clip_name, check_disjoint, holdout, read_metadata, read_split_csv
from dus_gym.tasks.resnet import AudioResNetEncoder, VisualResNetEncoder
from dus_gym.tasks.sources import ClipSource, imagenet_normalize, load_image

LAYOUT = ("metadata.json, train.csv, test.csv, audio/<clip>.npy and visual/<clip>/frame_*.jpg "
          "(run 'dus-gym prepare {dataset} SRC DST')")


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

    def load(self, clip: str) -> torch.Tensor:
        """Read, resize and normalise the clip's frames."""
        frames = sorted((self.root / "visual" / clip).glob("frame_*.jpg"))
        if not frames:
            raise FileNotFoundError(f"no frames in {self.root / 'visual' / clip}")
        picks = np.linspace(0, len(frames) - 1, self.n_frames).round().astype(int)
        return imagenet_normalize(torch.stack([load_image(frames[i], self.image_size) for i in picks]))


def check_layout(root: Path, dataset: str) -> dict:
    """Read ``metadata.json`` and check the split lists are there; one clear error otherwise."""
    return read_metadata(root, dataset, "dus-gym-audiovisual", LAYOUT.format(dataset=dataset), ("train", "test"))


def read_list(root: Path, split: str, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Clip names and class indices of a prepared split list, checking every clip's files."""
    index = {c: i for i, c in enumerate(classes)}
    clips, labels = [], []
    for line, row in enumerate(read_split_csv(root, split), start=2):
        if len(row) < 2:
            raise ValueError(f"{root / f'{split}.csv'}, line {line}: expected 'clip,label', got {row[:3]!r}; "
                             "rerun 'dus-gym prepare'")
        clip, label = check_clip_name(row[0], f"{root / f'{split}.csv'}, line {line}"), row[1]
        if label not in index:
            raise ValueError(f"{root / f'{split}.csv'}: label '{label}' is not among {list(classes)}")
        if not (root / "audio" / f"{clip}.npy").is_file() or not (root / "visual" / clip).is_dir():
            raise FileNotFoundError(f"clip '{clip}' of {split}.csv is incomplete under {root} (audio/{clip}.npy "
                                    f"or visual/{clip}/ missing): rerun 'dus-gym prepare' to finish it")
        clips.append(clip)
        labels.append(index[label])
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
    fit, val = holdout(train_labels, val_fraction, split_seed)

    def split(clips: list[str], labels: np.ndarray) -> MultimodalSplit:
        return MultimodalSplit({"audio": AudioClips(root_path, clips),
                                "visual": VisualClips(root_path, clips, n_frames, image_size)},
                               torch.from_numpy(labels))

    splits = {
        "train": split([train_clips[i] for i in fit], train_labels[fit]),
        "val": split([train_clips[i] for i in val], train_labels[val]),
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
