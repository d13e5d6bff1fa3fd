"""scripts/standalone_chain.py runs a build with only the build directory, numpy and onnxruntime.

The script runs in a subprocess whose import system refuses transprune, torch, transformers and
the other export-side packages, and its greedy tokens and kept indices must equal the PyTorch
reference's exactly (and every step's logits within 1e-4), for a left-padded batch of two prompts
of different lengths -- LLaVA-1.5 and LLaVA-NeXT (tiles, a pack index, keep ratios) alike.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "standalone_chain.py"
MAX_NEW_TOKENS = 16
PROMPTS = ["What is shown in this picture?",
           "Describe the colours, the shapes and every object you can see in this picture, in as much detail as you can."]
BLOCKED = ("transprune", "torch", "transformers", "onnx", "onnxscript", "safetensors", "tokenizers", "PIL")
MARKER = "STANDALONE-NO-FORBIDDEN-MODULES"

# Run in `python -I -c`: isolated mode (no PYTHONPATH, no user site, no cwd on sys.path), plus a
# meta-path finder that refuses the packages a torch-free host does not have. The venv still has
# transprune installed, hence the finder. After the script, none of them may be in sys.modules.
BOOTSTRAP = textwrap.dedent(
    """
    import importlib.abc, json, runpy, sys

    BLOCKED = set(json.loads(sys.argv[1]))

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    try:
        import transprune
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker did not block transprune")

    script, args = sys.argv[2], sys.argv[3:]
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exit:
        code = exit.code
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if loaded:
        raise SystemExit(f"forbidden modules were imported: {loaded}")
    print("%s")
    sys.exit(code)
    """ % MARKER
)


def run_standalone(build_dir: Path, inputs_dir: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    args = [str(build_dir), "--input-ids", str(inputs_dir / "input_ids.npy"),
            "--attention-mask", str(inputs_dir / "attention_mask.npy"),
            "--pixel-values", str(inputs_dir / "pixel_values.npy"),
            "--max-new-tokens", str(MAX_NEW_TOKENS), "--out", str(out),
            "--logits-out", str(out.with_suffix(".logits.npy"))]
    if (inputs_dir / "pack_index.npy").is_file():
        args += ["--pack-index", str(inputs_dir / "pack_index.npy")]
    return subprocess.run([sys.executable, "-I", "-c", BOOTSTRAP, json.dumps(BLOCKED), str(SCRIPT), *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def two_prompts(tiny_model, tmp_path_factory):
    """(directory with input_ids/attention_mask/pixel_values .npy, the torch inputs)."""
    from transprune.reference import encode_inputs
    from transprune.sample_image import sample_images

    inputs = encode_inputs(tiny_model.processor, sample_images()[:2], PROMPTS)
    directory = tmp_path_factory.mktemp("standalone-inputs")
    for name in ("input_ids", "attention_mask", "pixel_values"):
        np.save(directory / f"{name}.npy", inputs[name].numpy())
    return directory, inputs


def test_standalone_script_matches_reference(paper_build, tiny_model, two_prompts, tmp_path):
    from transprune.reference import TransPruneReference
    from transprune.schedule import preset

    build_dir, manifest = paper_build
    inputs_dir, inputs = two_prompts
    lengths = inputs["attention_mask"].sum(-1).tolist()
    assert lengths[0] != lengths[1] and int(inputs["attention_mask"][0, 0]) == 0  # left padding in play

    result = run_standalone(build_dir, inputs_dir, tmp_path / "result.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert MARKER in result.stdout, result.stdout + result.stderr
    ours = json.loads((tmp_path / "result.json").read_text())

    reference = TransPruneReference(tiny_model.model, preset("paper")).generate(
        inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], max_new_tokens=MAX_NEW_TOKENS)
    assert ours["tokens"] == reference.tokens
    assert len(ours["tokens"]) == 2 and all(len(t) == MAX_NEW_TOKENS for t in ours["tokens"])
    assert len(ours["kept"]) == len(reference.records) == len(manifest["keep_counts"])
    for stage, (mine, theirs) in enumerate(zip(ours["kept"], reference.records)):
        assert np.array_equal(np.array(mine, dtype=np.int64), theirs.kept.numpy()), f"stage {stage}"
    expected = float(reference.step_logits[0].abs().max())
    assert ours["max_abs_first_logit"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    # The tiny random model soon repeats one token, so equal tokens alone would not catch a wrong
    # decode position or mask; every step's logits must match too (the exporter's own bound).
    logits = np.load(tmp_path / "result.logits.npy")
    assert logits.shape == (MAX_NEW_TOKENS, 2, manifest["model"]["facts"]["vocab_size"])
    for step, theirs in enumerate(reference.step_logits):
        assert np.abs(logits[step] - theirs.float().numpy()).max() < 1e-4, f"decode step {step}"


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_graph_file_outside_build_dir_is_refused(paper_build, two_prompts, tmp_path, where):
    build_dir, _ = paper_build
    inputs_dir, _ = two_prompts
    copy = tmp_path / "build"
    shutil.copytree(build_dir, copy)  # never touch the session fixture's directory
    shutil.copy2(copy / "vision.onnx", tmp_path / "evil.onnx")  # a real graph, just in the wrong place
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"][0]["file"] = "../evil.onnx" if where == "parent" else str(tmp_path / "evil.onnx")
    (copy / "manifest.json").write_text(json.dumps(manifest))

    result = run_standalone(copy, inputs_dir, tmp_path / "result.json", cwd=tmp_path)
    assert result.returncode != 0
    assert "escapes the build directory" in result.stderr, result.stderr
    assert not (tmp_path / "result.json").exists()


def test_standalone_script_runs_llava_next_like_the_reference(next_build, tiny_next_model, tmp_path):
    """LLaVA-NeXT: the processor's tiles (flattened to [tiles, 3, H, W]) and the runtime's pack
    index for two same-size images with prompts of different lengths; tokens, kept indices (each
    prune keeping int(n * ratio)) and every step's logits equal the reference's."""
    from transprune.reference import TransPruneReference, encode_inputs
    from transprune.runtime.build import Build
    from transprune.runtime.inputs import ImageInputs
    from transprune.sample_image import sample_image
    from transprune.schedule import preset

    build_dir, manifest = next_build
    images = [sample_image(width=500, height=300), sample_image(width=500, height=300).transpose(0)]
    inputs = encode_inputs(tiny_next_model.processor, images, PROMPTS)
    prepared = ImageInputs(Build.open(build_dir)).prepare(images)
    pixels = inputs["pixel_values"].numpy()  # [B, tiles, 3, H, W]: equal tile counts, nothing padded
    assert pixels.shape[1] == prepared.tiles[0] == prepared.tiles[1]
    np.save(tmp_path / "input_ids.npy", inputs["input_ids"].numpy())
    np.save(tmp_path / "attention_mask.npy", inputs["attention_mask"].numpy())
    np.save(tmp_path / "pixel_values.npy", pixels.reshape(-1, *pixels.shape[2:]))
    np.save(tmp_path / "pack_index.npy", prepared.pack_index)

    result = run_standalone(build_dir, tmp_path, tmp_path / "result.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert MARKER in result.stdout, result.stdout + result.stderr
    ours = json.loads((tmp_path / "result.json").read_text())
    reference = TransPruneReference(tiny_next_model.model, preset("paper")).generate(
        inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], image_sizes=inputs["image_sizes"],
        max_new_tokens=MAX_NEW_TOKENS)
    n = prepared.image_tokens[0]
    assert [len(stage[0]) for stage in ours["kept"]] == [int(n * 0.875), int(n * 0.625), int(n * 0.125)]
    for stage, (mine, theirs) in enumerate(zip(ours["kept"], reference.records)):
        assert np.array_equal(np.array(mine, dtype=np.int64), theirs.kept.numpy()), f"stage {stage}"
    assert ours["tokens"] == reference.tokens
    logits = np.load(tmp_path / "result.logits.npy")
    for step, theirs in enumerate(reference.step_logits):
        assert np.abs(logits[step] - theirs.float().numpy()).max() < 1e-4, f"decode step {step}"
    # without the pack index the host names what is missing
    (tmp_path / "pack_index.npy").unlink()
    result = run_standalone(build_dir, tmp_path, tmp_path / "again.json", cwd=tmp_path)
    assert result.returncode != 0 and "needs --pack-index" in result.stderr, result.stderr
