"""Reading YAML safely and writing files so that they are never half-written.

Every file dus-gym writes (results, configs, checkpoints, policies, plots, prepared data) goes
through :func:`atomic_path`: the content is written to a uniquely named temporary file in the
same folder, then renamed over the target, so a killed process or a full disk leaves either the
previous file or the new one, never a partial one, and a planted file of a fixed temporary name
cannot redirect the write.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from dus_gym.core.config import ConfigError

FILE_MODE = 0o644
"""Permissions of written files: results are meant to be read by others."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed.

    The temporary name keeps the target's suffix, so writers that infer a format from it
    (``np.save``, ``savefig``) write the right one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    except OSError as err:
        _raise_write_error(path, err)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, FILE_MODE)  # mkstemp makes the file private
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        _raise_write_error(path, err)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _raise_write_error(path: Path, err: OSError) -> None:
    """Raise ``err`` again, or, for a full disk or quota, an OSError that names the file and says what to do."""
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        raise OSError(err.errno, f"cannot write {path}: no space left on device; the previous file (if any) is "
                                 "unchanged and no temporary file is left: free space and run again") from err
    raise err


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; one clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def sha256_of(path: str | Path) -> str:
    """The SHA-256 digest of a file's bytes, in hex (read in chunks: any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def new_run_folder(parent: str | Path, name: str) -> Path:
    """Create and return a new, empty folder ``parent/name_<N>``, N one above the highest taken.

    The numbering is SB3's (``get_latest_run_id``, which names SB3's TensorBoard folders and the RL
    Zoo's run folders ``<name>_1``, ``<name>_2``, ...). ``mkdir`` fails on an existing folder and the
    next number is tried, so runs started at once, by one process or several, never share a folder.
    """
    from stable_baselines3.common.utils import get_latest_run_id  # imports torch: only when a run starts

    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        folder = parent / f"{name}_{get_latest_run_id(str(parent), name) + 1}"
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if nothing was written into it (a run that failed before writing)."""
    try:
        folder.rmdir()
    except OSError:  # not empty, or already gone
        pass
