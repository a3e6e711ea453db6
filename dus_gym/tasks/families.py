"""Task families: sets of task instances, split into the instances a policy trains on and those held out.

A family env draws a task instance at every reset (or takes the one ``reset(options={"instance": i})``
names), so the right counts cannot be known before the episode starts: a policy has to read the
CMD state to find them. Built in (the table :data:`dus_gym.tasks.FAMILIES`):

- ``synthetic``: :func:`synthetic_family`, the synthetic task with drawn parameters;
- ``mfeat``: :func:`mfeat_family`, every ordered pair and triple of mfeat's six views.

A user's family is a list of task-kwargs overrides in the spec, or a generator function returning one
(see docs/env.md for a worked example).
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from dus_gym.core.config import MAX_SHOWN, FamilyConfig, checked_kwargs, shown
from dus_gym.core.registry import load_entry_point
from dus_gym.core.specs import deep_merge
from dus_gym.tasks import FAMILIES, Task, cached_task
from dus_gym.tasks.mfeat import VIEW_DIMS


def synthetic_family(n_instances: int = 160, seed: int = 0, modalities: tuple[int, ...] = (2, 3),
                     dominant_dims: tuple[int, ...] = (256, 512), weak_signal: tuple[float, float] = (1.5, 2.5),
                     harmless_share: float = 0.4) -> list[dict[str, Any]]:
    """Instances of the synthetic task with drawn parameters (``make_synthetic`` keyword arguments).

    Each instance draws: the number of modalities M in ``modalities`` (one dominant, M - 1 weak); the
    slot of the dominant modality (any position); its dimension (``dominant_dims``), coarse signal (6
    to 10) and noise (0.8 to 2: how memorisable it is); the weak modalities' dimension (8 or 16),
    signal (``weak_signal``) and noise (0.5 to 0.9): how weak they are; and, for a share
    ``harmless_share`` of the instances, a fine-class signal (3 to 6) in the dominant modality that
    makes it able to separate every class on its own, so that the imbalance is harmless there and
    starving the dominant modality can hurt. The data of each instance come from its own ``data_seed``.
    The defaults are the training family; other ranges give out-of-distribution instances (the spec
    ``synthetic-family-ood.yaml``: M = 4, a 1024-d dominant modality, weaker weak modalities).

    Args:
        n_instances: how many instances.
        seed: seed of the draw (the same seed gives the same family).
        modalities: the numbers of modalities M drawn from (each >= 2).
        dominant_dims: the dominant modality's dimensions drawn from.
        weak_signal: the range of the weak modalities' signal.
        harmless_share: the probability of a harmless instance (dominant fine-class signal).
    """
    if not modalities or min(modalities) < 2 or not dominant_dims or min(dominant_dims) < 1:
        raise ValueError(f"synthetic_family needs M >= 2 and positive dimensions, got {list(modalities)} and "
                         f"{list(dominant_dims)}")
    if len(weak_signal) != 2 or not 0 < weak_signal[0] <= weak_signal[1] or not 0 <= harmless_share <= 1:
        raise ValueError("synthetic_family needs weak_signal = (low, high) with 0 < low <= high and harmless_share "
                         f"in [0, 1], got {list(weak_signal)} and {harmless_share}")
    rng = np.random.default_rng(seed)
    instances = []
    for _ in range(n_instances):
        M = int(rng.choice(list(modalities)))
        instances.append({
            "n_weak": M - 1,
            "dominant_slot": int(rng.integers(M)),
            "dominant_dim": int(rng.choice(list(dominant_dims))),
            "coarse_signal": round(float(rng.uniform(6.0, 10.0)), 2),
            "dominant_noise": round(float(rng.uniform(0.8, 2.0)), 2),
            "weak_dim": int(rng.choice([8, 16])),
            "weak_signal": round(float(rng.uniform(weak_signal[0], weak_signal[1])), 2),
            "weak_noise": round(float(rng.uniform(0.5, 0.9)), 2),
            "dominant_fine_signal": round(float(rng.uniform(3.0, 6.0)), 2) if rng.random() < harmless_share else 0.0,
            "data_seed": int(rng.integers(2**31 - 1)),
        })
    return instances


def mfeat_family(sizes: tuple[int, ...] = (2, 3)) -> list[dict[str, Any]]:
    """Every ordered tuple of ``sizes`` distinct mfeat views (pairs and triples: 30 + 120 instances)."""
    return [{"views": list(views)} for size in sizes for views in itertools.permutations(VIEW_DIMS, size)]


def _held_out_groups(instances: list[dict[str, Any]], key: str, n_held: int, seed: int) -> list[int]:
    """Held-out instances drawn by whole groups (same value of ``key``; a list as the set of its items).

    Groups are drawn in a seeded order until at least ``n_held`` instances are held out, always leaving one
    group to train on.
    """
    groups: dict[Any, list[int]] = {}
    for i, instance in enumerate(instances):
        if key not in instance:
            raise ValueError(f"family.group_by '{key}': instance {i} has no such task kwarg")
        value = instance[key]
        groups.setdefault(frozenset(value) if isinstance(value, (list, tuple)) else value, []).append(i)
    ordered = list(groups.values())
    if len(ordered) < 2:
        raise ValueError(f"family.group_by '{key}' puts every instance in one group: nothing would be left to train on")
    held: list[int] = []
    for g in np.random.default_rng(seed).permutation(len(ordered))[: len(ordered) - 1]:
        if len(held) >= n_held:
            break
        held += ordered[int(g)]
    return held


@dataclass(frozen=True)
class TaskFamily:
    """The instances of a family of ``task``, and which of them are held out.

    Args:
        task: the task builder's name (or "module:function").
        base_kwargs: the task kwargs every instance starts from.
        instances: per instance, its overrides of ``base_kwargs``.
        held_out: the indices of the held-out instances (sorted).
    """

    task: str
    base_kwargs: dict[str, Any]
    instances: tuple[dict[str, Any], ...]
    held_out: tuple[int, ...]

    @classmethod
    def from_config(cls, task: str, task_kwargs: dict[str, Any], family: FamilyConfig) -> TaskFamily:
        """The family of a spec: its listed or generated instances and the seeded held-out split."""
        instances = list(family.instances)
        if family.generator is not None:
            if family.generator not in FAMILIES and ":" not in family.generator:
                raise FAMILIES.unknown(family.generator, " (family generators), or give 'package.module:function'")
            generate = (FAMILIES.get(family.generator) if family.generator in FAMILIES
                        else load_entry_point(family.generator))
            if not callable(generate) or inspect.isbuiltin(generate) or isinstance(generate, type):
                raise ValueError(f"family generator '{family.generator}' is {shown(generate)}, not a function that "
                                 "returns a list of task-kwargs mappings")
            kwargs = checked_kwargs(generate, family.generator_kwargs, "family.generator_kwargs")
            try:
                instances = generate(**kwargs)
            except Exception as err:  # name the generator (a user's may raise anything), keep the cause chained
                if family.generator in FAMILIES and isinstance(err, (ValueError, OSError)):
                    raise  # the built-in generators' own one-line errors
                raise ValueError(f"family generator '{family.generator}' failed: {type(err).__name__}: "
                                 f"{str(err)[:MAX_SHOWN]}") from err
            if not isinstance(instances, list) or not all(isinstance(x, dict) for x in instances) or not instances:
                raise ValueError(f"family generator '{family.generator}' must return a non-empty list of mappings")
        n = len(instances)
        n_held = round(family.held_out * n) if n > 1 else 0
        n_held = min(max(n_held, 1 if family.held_out > 0 and n > 1 else 0), n - 1)
        if family.group_by is None:
            held = np.random.default_rng(family.split_seed).permutation(n)[:n_held]
        else:
            held = _held_out_groups(instances, family.group_by, n_held, family.split_seed)
        return cls(task, dict(task_kwargs), tuple(instances), tuple(sorted(int(i) for i in held)))

    @property
    def train(self) -> tuple[int, ...]:
        """The indices of the training instances."""
        held = set(self.held_out)
        return tuple(i for i in range(len(self.instances)) if i not in held)

    def pool(self, name: str) -> tuple[int, ...]:
        """The indices of "train", "held-out" or "all" instances."""
        return {"train": self.train, "held-out": self.held_out, "all": tuple(range(len(self.instances)))}[name]

    def check_instance(self, instance: Any) -> int:
        """``instance`` if it is a plain int (not a bool, not a float) naming an instance; else a ValueError."""
        if isinstance(instance, (bool, np.bool_)) or not isinstance(instance, (int, np.integer)):
            raise ValueError(f"options['instance'] must be an int from 0 to {len(self.instances) - 1}, got "
                             f"{shown(instance)} ({type(instance).__name__})")
        if not 0 <= instance < len(self.instances):
            raise ValueError(f"instance {instance} is not in this family (0 to {len(self.instances) - 1})")
        return int(instance)

    def task_kwargs(self, i: int) -> dict[str, Any]:
        """The task kwargs of instance ``i`` (its overrides on the base kwargs)."""
        if not 0 <= i < len(self.instances):
            raise ValueError(f"instance {i} is not in this family (0 to {len(self.instances) - 1})")
        return deep_merge(self.base_kwargs, self.instances[i])

    def make(self, i: int) -> Task:
        """The task of instance ``i`` (built once per process)."""
        return cached_task(self.task, **self.task_kwargs(i))


def check_reset_options(options: Any, family: TaskFamily | None) -> None:
    """Refuse ``reset`` options that are not a dict (or None), or a family ``instance`` not a plain int in range.

    Raises:
        ValueError: options of another type; an instance that is a bool, a float, a string, a list or out of range.
    """
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"reset options must be a dict or None, got {type(options).__name__}")
    if family is not None and (options or {}).get("instance") is not None:
        family.check_instance(options["instance"])
