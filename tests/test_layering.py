"""The package's layers (docs/DESIGN.md §4), checked on every module's imports, at any depth
(imports inside functions count too):

- the core (``transprune/`` without ``cli/`` and ``bench/``) imports neither the exporter nor the
  runtime;
- the runtime imports nothing from the exporter, and no torch or transformers;
- ``transprune.bench`` and ``transprune.cli`` are the only places that may import everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"transprune": "transprune", "export": "transprune.export", "runtime": "transprune.runtime"}


def _modules():
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            yield name, path


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _layer(module: str) -> str | None:
    if module.startswith(("transprune.cli", "transprune.bench")):
        return "apps"
    for layer in ("transprune.export", "transprune.runtime"):
        if module == layer or module.startswith(layer + "."):
            return layer.split(".")[1]
    return "core" if module == "transprune" or module.startswith("transprune.") else None


FORBIDDEN = {"core": ("export", "runtime", "apps"), "runtime": ("export", "apps"), "export": ("apps",)}
THIRD_PARTY_FORBIDDEN = {"runtime": ("torch", "transformers")}

MODULES = list(_modules())


def test_every_folder_has_modules():
    assert {_layer(name) for name, _ in MODULES} == {"core", "export", "runtime", "apps"}


@pytest.mark.parametrize("name, path", MODULES, ids=[name for name, _ in MODULES])
def test_module_imports_respect_the_layers(name, path):
    layer = _layer(name)
    wrong = sorted(m for m in _imports(name, path) if _layer(m) in FORBIDDEN.get(layer, ()))
    assert not wrong, f"{name} ({layer}) imports {wrong}"
    banned = THIRD_PARTY_FORBIDDEN.get(layer, ())
    heavy = sorted(m for m in _imports(name, path) if m.split(".")[0] in banned)
    assert not heavy, f"{name} ({layer}) imports {heavy}: the runtime ships without torch"
