"""The distribution's promises: three import packages, and a runtime that needs no torch."""

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class Blocked(importlib.abc.MetaPathFinder):
        # what a Jetson image without PyTorch looks like to Python
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "transformers", "onnxscript", "safetensors"}:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocked())
    """
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_runtime_imports_with_torch_blocked():
    code = BLOCK_TORCH + textwrap.dedent(
        """
        import transprune, transprune.runtime
        from transprune import schedule, flops, presets, sampling, errors
        from transprune.cli import flops as flops_cli
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        report = flops.flops_report(model=presets.model_preset("llava-1.5-7b"), schedule=schedule.preset("paper"))
        print(round(report.baseline_tflops, 2), round(report.pruned_tflops, 2))
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3.82", "1.56"]


def test_blocker_really_blocks():
    # the check above only means something if the blocker works
    result = run_python(BLOCK_TORCH + "import torch")
    assert result.returncode != 0 and "blocked in this test" in result.stderr


def test_three_import_packages_map_to_top_level_folders():
    import transprune
    import transprune.export
    import transprune.runtime
    from pathlib import Path

    root = Path(transprune.__file__).resolve().parent.parent
    assert Path(transprune.export.__file__).resolve().parent in {root / "export", Path(transprune.__file__).resolve().parent / "export"}
    assert Path(transprune.runtime.__file__).resolve().parent.name == "runtime"


def test_every_source_folder_is_a_listed_package():
    """A subpackage left out of pyproject's list imports from the tree but is missing from the wheel."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"transprune": "transprune", "export": "transprune.export", "runtime": "transprune.runtime"}
    found = set()
    for folder, package in folders.items():
        for init in (root / folder).rglob("*.py"):
            if "__pycache__" not in init.parts:
                found.add(".".join((package, *init.parent.relative_to(root / folder).parts)))
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"


def test_tensorrt_planning_imports_with_torch_blocked():
    """transprune-build plans engines on a Jetson with JetPack's python3: no torch, no onnx."""
    code = BLOCK_TORCH + textwrap.dedent(
        """
        import transprune.export.tensorrt.plan, transprune.export.tensorrt.profiles, transprune.cli.build
        import transprune.runtime.tensorrt.backend
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr


def test_no_test_folder_passes_for_an_importable_module():
    """tests/export/tensorrt and tests/runtime/tensorrt mirror the source; on sys.path they would
    be a namespace package ``tensorrt``, and the code would take TensorRT for installed."""
    import importlib.util
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    for name in ("tensorrt", "tensorrt_rtx", "polygraphy", "runtime", "export"):
        spec = importlib.util.find_spec(name)
        where = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
        assert not any(tests in p.parents or p == tests for p in where), f"{name} resolves to {where}"
