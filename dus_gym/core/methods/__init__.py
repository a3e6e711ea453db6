"""Balancing methods: how one iteration's losses and gradients are formed (DUS is a plug-in to them).

- ``joint``: CE of the concatenation fusion head only.
- ``unimodal-aux``: fusion CE + sum_m w(m) CE(head_m) on m's own samples (DUS's base; the default).
- ``ogm-ge``: Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022.
- ``mmpareto``: Wei and Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal
  Assistance", ICML 2024.
- ``mla``: Zhang et al., "Multimodal Representation Learning by Alternating Unimodal Adaptation",
  CVPR 2024.
- ``pmr``: Fan et al., "PMR: Prototypical Modal Rebalance for Multimodal Learning", CVPR 2023.
- ``agm``: Li et al., "Boosting Multi-modal Model Performance with Adaptive Gradient Modulation", ICCV 2023.
- ``mmcosine``: Xu et al., "MMCosine: Multi-Modal Cosine Loss Towards Balanced Audio-Visual
  Fine-Grained Learning", ICASSP 2023.
- ``g-blending``: Wang, Tran and Feiszli, "What Makes Training Multi-Modal Classification Networks
  Hard?", CVPR 2020.
- ``greedy``: Wu, Jastrzebski, Cho and Geras, "Characterizing and Overcoming the Greedy Nature of Learning
  in Multi-modal Deep Neural Networks", ICML 2022.
- ``reconboost``: Hua et al., "ReconBoost: Boosting Can Achieve Modality Reconcilement", ICML 2024.
- ``umt``: Du et al., "On Uni-Modal Feature Learning in Supervised Multi-Modal Learning", ICML 2023
  (Uni-Modal Teacher; the teachers are trained in the first part of the same run).
- ``opm``: Wei, Hu, Du and Wen, "On-the-fly Modulation for Balanced Multimodal Learning", TPAMI 2024
  (On-the-fly Prediction Modulation; the journal extension of OGM-GE).
- ``amco``: Zhou et al., "Adaptive Mask Co-Optimization for Modal Dependence in Multimodal Learning",
  ICASSP 2023.
- ``cml``: Ma et al., "Calibrating Multimodal Learning", ICML 2023.
- ``sample``: Wei et al., "Enhancing Multimodal Cooperation via Sample-level Modality Valuation",
  CVPR 2024.
- ``relearning``: Wei et al., "Diagnosing and Re-learning for Balanced Multimodal Learning", ECCV 2024.
- ``lfm``: Yang et al., "Facilitating Multimodal Classification via Dynamically Learning Modality
  Gap", NeurIPS 2024.
- ``mbsd``: the MBSD objective of BalanceBenchmark's toolkit (cited there as Liu et al., 2023; Xu et
  al., "BalanceBenchmark: A Survey for Multimodal Imbalance Learning", arXiv 2502.10816).

Each was checked formula by formula against the authors' code; what follows it and what deviates
is written in each module and in the README's methods section. Every formula has a test against
a hand computation on a tiny batch (tests/core/test_methods.py). A user's own method subclasses
:class:`~dus_gym.core.methods.base.Method` and joins with :func:`register_method`.
"""

from __future__ import annotations

from typing import Any

from dus_gym.core.config import ConfigError, checked_kwargs, did_you_mean
from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext
from dus_gym.core.registry import Registry

METHODS: Registry[type[Method]] = Registry("method", {
    "joint": "dus_gym.core.methods.joint:Joint",
    "unimodal-aux": "dus_gym.core.methods.unimodal_aux:UnimodalAux",
    "ogm-ge": "dus_gym.core.methods.ogm_ge:OGMGE",
    "mmpareto": "dus_gym.core.methods.mmpareto:MMPareto",
    "mla": "dus_gym.core.methods.mla:MLA",
    "pmr": "dus_gym.core.methods.pmr:PMR",
    "agm": "dus_gym.core.methods.agm:AGM",
    "mmcosine": "dus_gym.core.methods.mmcosine:MMCosine",
    "g-blending": "dus_gym.core.methods.gblending:GBlending",
    "greedy": "dus_gym.core.methods.greedy:Greedy",
    "reconboost": "dus_gym.core.methods.reconboost:ReconBoost",
    "umt": "dus_gym.core.methods.umt:UMT",
    "opm": "dus_gym.core.methods.opm:OPM",
    "amco": "dus_gym.core.methods.amco:AMCo",
    "cml": "dus_gym.core.methods.cml:CML",
    "sample": "dus_gym.core.methods.sample_level:SampleLevel",
    "relearning": "dus_gym.core.methods.relearning:Relearning",
    "lfm": "dus_gym.core.methods.lfm:LFM",
    "mbsd": "dus_gym.core.methods.mbsd:MBSD",
})
"""Method name -> class (or "module:Class", imported on first use)."""


def register_method(name: str, method: type[Method] | str) -> None:
    """Make a :class:`Method` subclass (or ``"module:Class"``) available under ``name``."""
    METHODS.register(name, method)


def method_class(name: str) -> type[Method]:
    """The class of a registered method; one clear error (with the nearest name) for an unknown one."""
    if name not in METHODS:
        lower = name.lower()
        close = f" (did you mean '{lower}'?)" if lower in METHODS else did_you_mean(lower, METHODS)
        raise ConfigError(f"unknown method '{name}'{close}; choose from {sorted(METHODS)}")
    return METHODS.get(name)


def check_method_fusion(name: str, fusion: str) -> None:
    """One clear error when method ``name`` is not defined for the fusion head ``fusion`` (learner.fusion)."""
    supported = method_class(name).fusions
    if supported is not None and fusion not in supported:
        raise ConfigError(f"method '{name}' is defined for learner.fusion in {list(supported)}, got '{fusion}'")


def make_method(name: str, **kwargs: Any) -> Method:
    """Build a registered method; one clear error for an unknown name or keyword."""
    cls = method_class(name)
    try:
        checked = checked_kwargs(cls, kwargs, "learner.method_kwargs")
    except ConfigError as err:
        raise ConfigError(f"{err} (method '{name}')") from err
    return cls(**checked)


__all__ = ["METHODS", "IterationBatch", "Method", "MethodOutput", "StepContext", "check_method_fusion", "make_method",
           "method_class", "register_method"]
