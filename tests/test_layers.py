"""The layers contract in pyproject.toml ([tool.importlinter]) holds on the real tree, bites when a lower
layer imports a higher one, and places every package: a module the contract does not name is unguarded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


def lint(root: Path) -> subprocess.CompletedProcess:
    """import-linter on the tree at ``root`` (its own pyproject.toml, its own packages first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def contracts() -> dict[str, dict]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in config["contracts"]}


def layer_modules(layer: str) -> list[str]:
    """The modules of one layer line ("a | b", "a : (b)"), optional ones unwrapped."""
    parts = layer.replace("|", ":").split(":")
    return [part.strip().strip("()") for part in parts]


def placed_modules() -> set[str]:
    """Every module or package the code has that the layers contract must place: the children of streamer and
    workers, and of streamer.config the children one by one (the loader is a layer above the schema)."""
    found = set()
    for package in ("streamer", "workers", "streamer.config"):
        folder = REPO / package.replace(".", "/")
        for child in folder.iterdir():
            is_module = child.suffix == ".py" and child.stem not in ("__init__", "__main__")
            if is_module or (child / "__init__.py").is_file():
                found.add(f"{package}.{child.stem if is_module else child.name}")
    return found - {"streamer.config"}


def test_the_tree_keeps_the_layers_the_model_boundary_and_has_no_import_circle():
    done = lint(REPO)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " 0 broken" in done.stdout, done.stdout[-2000:]


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path):
    for part in ("streamer", "workers"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "*.txt"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    frames = tmp_path / "streamer" / "video" / "frames.py"
    frames.write_text(frames.read_text() + "\nimport streamer.supervisor  # a video module reaching up to the top\n")
    done = lint(tmp_path)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    assert "streamer.video is not allowed to import streamer.supervisor" in done.stdout, done.stdout[-3000:]
    assert "streamer.video.frames -> streamer.supervisor" in done.stdout, done.stdout[-3000:]


def test_every_package_has_a_layer_and_every_model_module_the_model_boundary():
    layers = [module for layer in contracts()["layers"]["layers"] for module in layer_modules(layer)]
    unplaced = sorted(placed_modules() - set(layers))
    assert not unplaced, (f"{', '.join(unplaced)}: not in the layers contract of pyproject.toml "
                          "([tool.importlinter], id 'layers'); add each to the layer it belongs to")
    model_layer = next(layer for layer in contracts()["layers"]["layers"] if "workers.model" in layer)
    existing = set(layer_modules(model_layer)) & placed_modules()
    unguarded = sorted(existing - set(contracts()["model"]["source_modules"]))
    assert not unguarded, (f"{', '.join(unguarded)}: a model module missing from source_modules of the 'model' "
                           "contract in pyproject.toml; add it there too")
