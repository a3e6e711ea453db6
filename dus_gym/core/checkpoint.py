"""Checkpoints: learner checkpoints (``learner.pt``) and the run checkpoints of ``dus-gym run``.

A learner checkpoint holds the model, optimiser, scheduler, data walk and counters of one learner,
with the task, modalities and method it belongs to; :func:`read_learner_checkpoint` reads and
checks it without building a learner (the batched learner loads it into one of its N slots).

A run checkpoint holds everything that makes a resumed run equal an uninterrupted one: the
learner (model, optimiser, scheduler, data walk with its generator), the
sampler's and the CMD monitor's state, the count history, the validation curve, the loop's own
variables and the process-wide RNG states (Python, NumPy, torch). It holds only tensors, numbers,
strings, lists and mappings, so it is read back with ``torch.load(weights_only=True)``, and it is
written through a temporary file and a rename, so a killed process leaves the previous one intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dus_gym.core.files import atomic_path

LEARNER_CHECKPOINT_FORMAT = "dus-gym-learner"
LEARNER_CHECKPOINT_VERSION = 1
RUN_CHECKPOINT_FORMAT = "dus-gym-run"
RUN_CHECKPOINT_VERSION = 1
IGNORED_CONFIG_KEYS = ("run_dir",)
"""Run-config keys that may differ between the checkpointed run and the resumed one."""
IGNORED_LEARNER_KEYS = ("device", "num_workers")
"""Learner keys that may differ too (where and how data is loaded, not what is computed)."""


def rng_state() -> dict[str, Any]:
    """The process-wide generators' states (Python, NumPy legacy, torch CPU) in a weights-only form."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run config without the keys a resume may change, tuples as lists (as YAML reads them back)."""
    kept = {k: _plain(v) for k, v in config.items() if k not in IGNORED_CONFIG_KEYS}
    if isinstance(kept.get("learner"), dict):
        kept["learner"] = {k: v for k, v in kept["learner"].items() if k not in IGNORED_LEARNER_KEYS}
    return kept


def write_payload(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` of ``payload`` through a temporary file and a rename (never half-written)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_payload(path: Path, device: Any, fmt: str, version: int, kind: str, origin: str, stale: str
                 ) -> dict[str, Any]:
    """A checkpoint mapping of format ``fmt`` and ``version``, read with ``weights_only=True``.

    Args:
        path: the file.
        device: where tensors are mapped (``map_location``).
        fmt: the expected ``format`` entry.
        version: the expected ``version`` entry.
        kind: what the file is ("learner", "run"), for the messages.
        origin: what to do when the file is unreadable (where such a file comes from).
        stale: what to do when it has another format version.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable or unsafe, another format, or another version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises several types for unreadable or unsafe files
        raise ValueError(f"{path} is not a readable {kind} checkpoint ({type(err).__name__}); {origin}") from err
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(f"{path} is not a dus-gym {kind} checkpoint")
    if payload.get("version") != version:
        raise ValueError(f"{path} is a {kind} checkpoint of format version {payload.get('version')}, "
                         f"this dus-gym reads version {version}; {stale}")
    return payload


def write_learner_checkpoint(path: str | Path, task: str, modalities: tuple[str, ...], method: str,
                             state: dict[str, Any]) -> None:
    """Write a learner's state dict with what it belongs to (atomically)."""
    write_payload(Path(path), {"format": LEARNER_CHECKPOINT_FORMAT, "version": LEARNER_CHECKPOINT_VERSION,
                               "task": task, "method": method, "modalities": list(modalities), "state": state})


def read_learner_checkpoint(path: str | Path, device: Any, task: str, modalities: tuple[str, ...], method: str,
                            shared_head: bool) -> dict[str, Any]:
    """The state dict of a learner checkpoint, checked against the learner that will load it.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a dus-gym learner checkpoint, another version, another task or modalities,
            or a method of another head layout (one of the two shares a single head).
    """
    payload = read_payload(Path(path), device, LEARNER_CHECKPOINT_FORMAT, LEARNER_CHECKPOINT_VERSION, "learner",
                           "point to a learner.pt written by dus-gym", "retrain or convert it")
    if payload.get("task") != task or payload.get("modalities") != list(modalities):
        raise ValueError(f"{path} was saved for task '{payload.get('task')}' with modalities "
                         f"{payload.get('modalities')}, not '{task}' with {list(modalities)}")
    saved_method = payload.get("method", "unimodal-aux")
    if saved_method != method and (shared_head or saved_method == "mla"):
        raise ValueError(f"{path} was saved by method '{saved_method}', this learner uses '{method}' "
                         "and one of them shares a single head between modalities; use the same method")
    return payload["state"]


def save_run_checkpoint(path: Path, state: dict[str, Any], config: dict[str, Any]) -> None:
    """Write ``state`` with the format, version and run config atomically (temporary file, then rename)."""
    write_payload(path, {"format": RUN_CHECKPOINT_FORMAT, "version": RUN_CHECKPOINT_VERSION,
                         "config": comparable_config(config), "state": state})


def load_run_checkpoint(path: Path, config: dict[str, Any], device: torch.device | str = "cpu",
                        may_differ: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a run checkpoint (``weights_only=True``) and check that it belongs to ``config``.

    ``may_differ``: dotted config keys a resume changes on purpose (``learner.lr``), not compared.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable, not a dus-gym run checkpoint, another format version, or written
            for another run configuration (the message names the keys that differ).
    """
    payload = read_payload(path, device, RUN_CHECKPOINT_FORMAT, RUN_CHECKPOINT_VERSION, "run",
                           "it is written by 'dus-gym run' as checkpoint.pt", "start the run again")
    saved, wanted = payload.get("config"), comparable_config(config)
    for key in may_differ:
        for table in (saved, wanted):
            *parents, leaf = key.split(".")
            for parent in parents:
                table = table.get(parent) if isinstance(table, dict) else None
            if isinstance(table, dict):
                table.pop(leaf, None)
    if saved != wanted:
        differ = _differences(saved if isinstance(saved, dict) else {}, wanted)
        raise ValueError(f"{path} was written for another run configuration (differs in {differ}); "
                         "resume with the run's own config.yaml")
    return payload["state"]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b), key=str):
        name = f"{prefix}{key}"
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            keys += _differences(a[key], b[key], f"{name}.")
        elif a.get(key) != b.get(key):
            keys.append(name)
    return keys
