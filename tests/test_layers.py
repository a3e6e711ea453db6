"""The package's layers: each subpackage imports only the layers before it (dus_gym/__init__.py lists them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dus_gym

LAYERS = ("core", "tasks", "samplers", "envs", "agents", "experiments", "cli")
ROOT_MODULES = {"__init__", "__main__", "error"}
"""Modules beside the layers: the package root, ``python -m dus_gym`` and the exceptions (imported by every layer)."""
PACKAGE = Path(dus_gym.__file__).parent


def layer_of(module: str) -> str | None:
    """The layer of a ``dus_gym.*`` module name (None for the package root and non-dus_gym modules)."""
    parts = module.split(".")
    if parts[0] != "dus_gym" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layer_violations(package: Path = PACKAGE) -> list[str]:
    """Every import of a later layer in ``package``, one line each."""
    found = []
    for path in sorted(package.rglob("*.py")):
        own = layer_of("dus_gym." + ".".join(path.relative_to(package).with_suffix("").parts))
        if own is None:
            continue
        for name in sorted(imported_modules(path)):
            other = layer_of(name)
            if other is not None and LAYERS.index(other) > LAYERS.index(own):
                found.append(f"{path.relative_to(package.parent).as_posix()} ({own}) imports {name} ({other})")
    return found


def test_every_subpackage_is_a_layer():
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} | {p.stem for p in PACKAGE.glob("*.py")}
    assert subpackages - ROOT_MODULES == set(LAYERS)


def test_no_layer_imports_a_later_one():
    assert layer_violations() == []


def test_the_check_sees_an_upward_import(tmp_path):
    fake = tmp_path / "dus_gym"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "__init__.py").write_text("")
    (fake / "core" / "bad.py").write_text("def f():\n    from dus_gym.envs.env import DUSEnv\n")
    assert layer_violations(fake) == ["dus_gym/core/bad.py (core) imports dus_gym.envs.env (envs)",
                                  "dus_gym/core/bad.py (core) imports dus_gym.envs.env.DUSEnv (envs)"]


@pytest.mark.parametrize("module, layer", [("dus_gym.core.task", "core"), ("dus_gym", None), ("torch.nn", None)])
def test_layer_of(module, layer):
    assert layer_of(module) == layer
