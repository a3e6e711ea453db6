"""Twitter2015 and Sarcasm tasks over the layout written by ``dus-gym prepare`` (:mod:`.prepare`).

Two modalities: ``text`` (the BERT token ids and attention masks, held in host memory: (N, 2, L)
integers, moved to the device batch by batch like the images) and ``image`` (a lazy source that
loads ``images/<image>.jpg``, ImageNet-normalised).
The published train / validation / test lists are the three splits. Encoders: BERT-base (text)
and ResNet-50 (image), fine-tuned from their published weights (BERT ``bert-base-uncased`` from a
hub name or a local folder, torchvision's ImageNet ResNet-50 from a URL or a local file), or
randomly initialised with ``pretrained=false``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dus_gym.core.task import MultimodalSplit, Task
from dus_gym.tasks.bert import BertTextEncoder
from dus_gym.tasks.imagetext.prepare import DEFAULT_TOKENIZER, FORMAT, SPLITS
from dus_gym.tasks.layout import check_clip_name, read_metadata, read_split_csv
from dus_gym.tasks.resnet import ImageResNetEncoder
from dus_gym.tasks.sources import ClipSource, HostTensor, imagenet_normalize, load_image
from dus_gym.tasks.weights import TORCHVISION_RESNET50, load_state_dict

LAYOUT = ("metadata.json, train.csv, val.csv, test.csv, text/<split>.npz and images/<image>.jpg "
          "(run 'dus-gym prepare {dataset} SRC DST')")
RESNET50 = {"blocks": (3, 4, 6, 3), "width": 64}


class ImageFiles(ClipSource):
    """The image of each sample: ``images/<name>.jpg`` resized to S x S, ImageNet-normalised: (3, S, S).

    Args:
        root: the prepared data folder.
        clips: image names, one per sample (several samples may share one image).
        image_size: side S.
    """

    def __init__(self, root: Path, clips: Sequence[str], image_size: int) -> None:
        super().__init__(root, clips)
        self.image_size = image_size

    def load(self, clip: str) -> torch.Tensor:
        """Read, resize and normalise one image."""
        return imagenet_normalize(load_image(self.root / "images" / f"{clip}.jpg", self.image_size))


def read_tokens(root: Path, split: str, n: int, max_length: int) -> torch.Tensor:
    """(n, 2, L) int64 token ids and attention masks of a split, checked against the list's length."""
    path = root / "text" / f"{split}.npz"
    try:
        with np.load(path, allow_pickle=False) as archive:
            ids, mask = archive["input_ids"], archive["attention_mask"]
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path} is missing or unreadable ({err}); rerun 'dus-gym prepare'") from err
    if ids.shape != (n, max_length) or mask.shape != ids.shape:
        raise ValueError(f"{path} holds tokens of shape {ids.shape}, expected ({n}, {max_length}) as {split}.csv "
                         "and metadata.json say; rerun 'dus-gym prepare'")
    return torch.from_numpy(np.stack([ids, mask], axis=1).astype(np.int64))


def image_encoder(config: dict[str, Any], weights: str | None) -> ImageResNetEncoder:
    """A fresh ResNet image encoder, from ``weights`` (a file or URL) or random."""
    state = load_state_dict(weights, "ResNet-50 image encoder") if weights else None
    return ImageResNetEncoder(tuple(config["blocks"]), int(config["width"]), weights=state)


def make_imagetext(
    dataset: str,
    root: str,
    image_size: int | None = None,
    pretrained: bool = True,
    text_model: str = DEFAULT_TOKENIZER,
    text_config: dict[str, Any] | None = None,
    image_weights: str = TORCHVISION_RESNET50,
    image_config: dict[str, Any] | None = None,
) -> Task:
    """Build an image-text task from a prepared folder.

    Args:
        dataset: "twitter2015" or "sarcasm".
        root: the folder written by ``dus-gym prepare``.
        image_size: side of the images given to the encoder (default: the prepared size).
        pretrained: start from published weights (BERT: ``text_model``; ResNet-50: ``image_weights``);
            False: random initialisation of both encoders.
        text_model: BERT hub name or local folder (its tokenizer must be the one ``prepare`` used).
        text_config: ``BertConfig`` keywords of the random-weight BERT (``pretrained=false``; default BERT-base).
        image_weights: torchvision-layout ResNet-50 weights, a local file or a URL (``pretrained`` only).
        image_config: ``{"blocks": [...], "width": w}`` of a smaller bottleneck ResNet (default ResNet-50);
            only with ``pretrained=false``, since the published weights are ResNet-50's.
    """
    root_path = Path(root).expanduser()
    metadata = read_metadata(root_path, dataset, FORMAT, LAYOUT.format(dataset=dataset), SPLITS)
    classes, text = metadata["classes"], metadata["text"]
    if pretrained and image_config is not None:
        raise ValueError("image_config gives another ResNet than the published ResNet-50: use it with pretrained=false")
    config = {**RESNET50, **(image_config or {})}
    if set(config) != set(RESNET50):
        raise ValueError(f"image_config keys must be among {sorted(RESNET50)}, got {sorted(image_config or {})}")
    if pretrained and not image_weights.startswith(("http://", "https://")) and not Path(image_weights).is_file():
        raise FileNotFoundError(f"ResNet-50 weights file not found: {image_weights}; give torchvision's "
                                "resnet50-0676ba61.pth, or set task_kwargs.pretrained=false")

    def split(name: str) -> MultimodalSplit:
        rows = read_split_csv(root_path, name, "samples")
        images = [check_clip_name(row[1], f"{root_path / f'{name}.csv'}", "image name") for row in rows]
        missing = [image for image in dict.fromkeys(images) if not (root_path / "images" / f"{image}.jpg").is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) of {name}.csv are missing under {root_path / 'images'} "
                                    f"(e.g. {missing[:3]}): rerun 'dus-gym prepare' to finish it")
        labels = np.asarray([int(row[2]) for row in rows], dtype=np.int64)
        tokens = read_tokens(root_path, name, len(rows), int(text["max_length"]))
        return MultimodalSplit({"text": HostTensor(tokens),
                                "image": ImageFiles(root_path, images, image_size or int(metadata["image"]["size"]))},
                               torch.from_numpy(labels))

    feature_dim = int(config["width"]) * 2 ** (len(config["blocks"]) - 1) * 4
    encoders = {
        "text": functools.partial(BertTextEncoder, text_model, pretrained, text_config, int(text["vocab_size"]),
                                  feature_dim),
        "image": functools.partial(image_encoder, config, image_weights if pretrained else None),
    }
    return Task(name=dataset, modalities=("text", "image"), n_classes=len(classes),
                splits={name: split(name) for name in SPLITS}, encoders=encoders,
                metadata={"root": str(root_path), "classes": classes, "preprocessing": metadata})


def make_twitter2015(root: str, image_size: int | None = None, pretrained: bool = True,
                     text_model: str = DEFAULT_TOKENIZER, text_config: dict[str, Any] | None = None,
                     image_weights: str = TORCHVISION_RESNET50, image_config: dict[str, Any] | None = None) -> Task:
    """Twitter2015 (3 sentiment classes) from ``dus-gym prepare twitter2015`` (see :func:`make_imagetext`)."""
    return make_imagetext("twitter2015", root, image_size, pretrained, text_model, text_config, image_weights,
                          image_config)


def make_sarcasm(root: str, image_size: int | None = None, pretrained: bool = True,
                 text_model: str = DEFAULT_TOKENIZER, text_config: dict[str, Any] | None = None,
                 image_weights: str = TORCHVISION_RESNET50, image_config: dict[str, Any] | None = None) -> Task:
    """Sarcasm (2 classes) from ``dus-gym prepare sarcasm`` (see :func:`make_imagetext`)."""
    return make_imagetext("sarcasm", root, image_size, pretrained, text_model, text_config, image_weights,
                          image_config)
