"""Issue 19, cases 5, 8 and 9 for builds: a build directory is untrusted input. Every damaged,
swapped or hostile build below is refused by the CLI (one line, exit 2) and by the API (a typed
error with a one-line message), with verification on and, where the damage is not a checksum
matter, with ``--no-verify`` too; and nothing in the build is written or deleted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import onnx
import pytest

from transprune.cli.run import main as run_main
from transprune.runtime.manifest import MANIFEST, MAX_MANIFEST_BYTES, sha256
from transprune.runtime.onnx_header import IDENTITY_KEY
from transprune.runtime.pipeline import Pipeline

from .conftest import Tree, assert_one_line_error, assert_one_line_message


def _manifest(build: Path) -> dict:
    return json.loads((build / MANIFEST).read_text())


def _save_manifest(build: Path, manifest: dict) -> None:
    (build / MANIFEST).write_text(json.dumps(manifest))


def _graph(manifest: dict, name: str) -> dict:
    return next(g for g in manifest["graphs"] if g["name"] == name)


def _rehash(build: Path, manifest: dict, *names: str) -> None:
    """Updates the manifest's sha256 of ``names`` (what a tamperer who edits files would do)."""
    for graph in manifest["graphs"]:
        for name in names:
            if name in graph["sha256"]:
                graph["sha256"][name] = sha256(build / name)
    for name in names:
        if name in manifest.get("processor_files", {}):
            manifest["processor_files"][name] = sha256(build / name)


def _edit(function):
    """A damage that edits the manifest only."""
    def damage(build: Path) -> None:
        manifest = _manifest(build)
        function(manifest)
        _save_manifest(build, manifest)
    return damage


def _set_identity(build: Path, file: str, change) -> None:
    model = onnx.load(build / file)
    props = {p.key: p.value for p in model.metadata_props}
    props = change(props)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, build / file)
    manifest = _manifest(build)
    _rehash(build, manifest, file)
    _save_manifest(build, manifest)


def _swap_scorers(build: Path) -> None:
    a, b = build / "scorer_0.onnx", build / "scorer_1.onnx"
    swap = build / "swap"
    a.rename(swap)
    b.rename(a)
    swap.rename(b)
    manifest = _manifest(build)
    _rehash(build, manifest, "scorer_0.onnx", "scorer_1.onnx")
    for graph in manifest["graphs"]:  # each file's weights go with it: swap the data files' listings too
        if graph["name"] in ("scorer_0", "scorer_1"):
            other = "scorer_1" if graph["name"] == "scorer_0" else "scorer_0"
            graph["sha256"] = {graph["file"]: graph["sha256"][graph["file"]],
                               f"{other}.onnx.data": sha256(build / f"{other}.onnx.data")}
    _save_manifest(build, manifest)


def _strip_identity(build: Path) -> None:
    _set_identity(build, "segment_1.onnx", lambda props: {k: v for k, v in props.items() if k != IDENTITY_KEY})


def _identity_of_another_build(build: Path) -> None:
    def change(props):
        identity = json.loads(props[IDENTITY_KEY])
        identity["attrs"]["keep"] -= 1  # the same role in a build of another schedule
        return {**props, IDENTITY_KEY: json.dumps(identity)}
    _set_identity(build, "scorer_0.onnx", change)


def _external_data(build: Path, *, listed: bool, location: str | None = None) -> None:
    """head's weights live in head.onnx.data (an export keeps every graph's weights external): the
    manifest stops listing that file, or the graph says its data lives at ``location``."""
    manifest = _manifest(build)
    head = _graph(manifest, "head")
    if location is not None:
        model = onnx.load(build / "head.onnx", load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, build / "head.onnx")
        head["sha256"]["head.onnx"] = sha256(build / "head.onnx")
    if not listed:
        del head["sha256"]["head.onnx.data"]
    _save_manifest(build, manifest)


def _truncate(build: Path) -> None:
    data = (build / "segment_0.onnx").read_bytes()
    (build / "segment_0.onnx").write_bytes(data[: len(data) // 2])


def _corrupt_tokenizer_with_matching_hash(build: Path) -> None:
    (build / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "NoSuchModel"}}')
    manifest = _manifest(build)
    _rehash(build, manifest, "tokenizer.json")
    _save_manifest(build, manifest)


def _deep_manifest(build: Path) -> None:
    manifest = _manifest(build)
    text = json.dumps(manifest)
    depth = 100_000
    (build / MANIFEST).write_text(text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}")


def _huge_manifest(build: Path) -> None:
    manifest = _manifest(build)
    manifest["padding"] = "x" * (MAX_MANIFEST_BYTES + 1)
    _save_manifest(build, manifest)


def _fifo_manifest(build: Path) -> None:
    (build / MANIFEST).unlink()
    os.mkfifo(build / MANIFEST)


def _forget_tokenizer(manifest: dict) -> None:
    del manifest["processor_files"]["tokenizer.json"]


# (damage, phrases the one-line message must hold, refused under --no-verify as well)
CASES = {
    "graph file missing from its sha256 table": (_edit(lambda m: _graph(m, "segment_1")["sha256"].pop("segment_1.onnx")),
                                                 ["does not list its file"], True),
    "empty sha256 table": (_edit(lambda m: _graph(m, "head").update(sha256={})), ["does not list its file"], True),
    "no sha256 table": (_edit(lambda m: _graph(m, "head").pop("sha256")), ["does not list its file"], True),
    "sha256 table as a list": (_edit(lambda m: _graph(m, "head").update(sha256=["head.onnx"])),
                               ["does not list its file"], True),
    "sha256 value not a string": (_edit(lambda m: _graph(m, "head")["sha256"].update({"head.onnx": 5})),
                                  ["not a string"], True),
    "unlisted external data file": (lambda b: _external_data(b, listed=False), ["head.onnx.data", "not list"], True),
    "external data outside the build": (lambda b: _external_data(b, listed=True, location="../head.onnx.data"),
                                        ["not a safe name"], True),
    "external data at an absolute path": (lambda b: _external_data(b, listed=True, location="/etc/passwd"),
                                          ["not a safe name"], True),
    "two scorer files swapped, hashes updated": (_swap_scorers, ["scorer_0.onnx", "not the graph"], True),
    "graph file without an identity": (_strip_identity, ["no transprune graph identity"], True),
    "graph file of another build": (_identity_of_another_build, ["of another build"], True),
    "graphs as a string": (_edit(lambda m: m.update(graphs="vision.onnx")), ["not a list of graph entries"], True),
    "graphs as null": (_edit(lambda m: m.update(graphs=None)), ["not a list of graph entries"], True),
    "a graph file named '.'": (_edit(lambda m: _graph(m, "head").update(file=".")), ["not a safe name"], True),
    "manifest nested 100,000 deep": (_deep_manifest, ["nests deeper"], True),
    "manifest over the size cap": (_huge_manifest, ["MB"], True),
    "manifest is a FIFO": (_fifo_manifest, ["not a regular file"], True),
    "a 5,000-digit number": (lambda b: (b / MANIFEST).write_text('{"schema_version": ' + "9" * 5000 + "}"),
                             ["not valid JSON"], True),
    "truncated graph": (_truncate, ["segment_0.onnx"], True),
    "corrupt tokenizer whose hash matches": (_corrupt_tokenizer_with_matching_hash, ["not a tokenizer"], True),
    "tokenizer not listed": (_edit(_forget_tokenizer), ["tokenizer.json", "without listing it"], True),
    "keep count over the image tokens": (_edit(lambda m: _graph(m, "scorer_0")["attrs"].update(keep=600)),
                                         ["re-export"], True),
    "positions that would size a terabyte cache": (_edit(lambda m: m["limits"].update(max_total_tokens=10**12)),
                                                   ["max_total_tokens", "outside"], True),
    "key/value heads that would size a huge cache": (
        _edit(lambda m: _graph(m, "segment_0")["inputs"][3].update(axes=["batch", 10**9, "past", 8])),
        ["re-export"], True),
}


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    from transprune.sample_image import sample_image

    path = tmp_path_factory.mktemp("image") / "photo.png"
    sample_image().save(path)
    return path


@pytest.mark.parametrize("verify", [True, False], ids=["verified", "no-verify"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_build_is_refused_by_the_cli(case, verify, build_copy, image_file, capsys):
    damage, phrases, without_verify = CASES[case]
    if not verify and not without_verify:
        pytest.skip("a checksum matter: --no-verify asks not to check it")
    damage(build_copy)
    before = Tree.of(build_copy.parent)
    status = run_main([str(build_copy), "--image", str(image_file), "--prompt", "hi", "--max-new-tokens", "2",
                       *([] if verify else ["--no-verify"])])
    assert_one_line_error(status, capsys.readouterr().err, *phrases)
    before.assert_unchanged()


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_build_is_refused_by_the_api(case, build_copy):
    damage, phrases, _ = CASES[case]
    damage(build_copy)
    with pytest.raises(Exception) as caught:
        Pipeline.from_dir(build_copy)
    assert_one_line_message(caught.value, *phrases)


def test_every_graph_with_weights_keeps_them_in_a_listed_data_file(paper_build):
    """The rule refuses unlisted data, not external data: an export lists each graph's .data file."""
    manifest = _manifest(paper_build[0])
    for graph in manifest["graphs"]:
        data = f"{graph['file']}.data"
        if graph["kind"] == "prefill_inputs":  # computes from its inputs alone: no weights
            assert data not in graph["sha256"] and not (paper_build[0] / data).exists()
            continue
        assert set(graph["sha256"]) == {graph["file"], data}, graph["name"]
        assert sha256(paper_build[0] / data) == graph["sha256"][data]


RUN_OPTIONS = {
    "--threads 100000": (["--threads", "100000"], ["threads 100000 must be an integer from 1 to"]),
    "--threads 0": (["--threads", "0"], ["threads 0 must be"]),
    "--seed -1": (["--temperature", "0.5", "--seed", "-1"], ["seed -1 must be an integer from 0"]),
    "--seed 2**64": (["--temperature", "0.5", "--seed", str(2**64)], ["must be an integer from 0"]),
    "--temperature nan": (["--temperature", "nan"], ["temperature nan must be"]),
    "prompt with an undecodable byte": (["--prompt", "what is \udcff here?"], ["not valid text", "UTF-8"]),
}


@pytest.mark.parametrize("case", list(RUN_OPTIONS))
def test_bad_run_options_are_one_line_errors(case, paper_build, image_file, capsys):
    extra, phrases = RUN_OPTIONS[case]
    build, _ = paper_build
    before = Tree.of(build)
    prompt = [] if "--prompt" in extra else ["--prompt", "hi"]
    status = run_main([str(build), "--image", str(image_file), *prompt, "--max-new-tokens", "2", *extra])
    assert_one_line_error(status, capsys.readouterr().err, *phrases)
    before.assert_unchanged()


@pytest.mark.parametrize("options, phrases", [
    (dict(threads=100_000), ["threads 100000"]),
    (dict(threads=-1), ["threads -1"]),
    (dict(threads="2"), ["threads '2'"]),
])
def test_bad_backend_options_are_typed_errors(options, phrases, paper_build):
    with pytest.raises(Exception) as caught:
        Pipeline.from_dir(paper_build[0], **options)
    assert_one_line_message(caught.value, *phrases)


@pytest.mark.parametrize("options, phrases", [
    (dict(seed=-1, temperature=0.5), ["seed -1"]),
    (dict(temperature="hot"), ["temperature 'hot'"]),
    (dict(max_new_tokens=0), ["max_new_tokens 0"]),
    (dict(max_new_tokens=10**9), ["lower max_new_tokens"]),
])
def test_bad_generation_options_are_typed_errors(options, phrases, paper_build, image_file):
    with Pipeline.from_dir(paper_build[0], threads=1) as pipeline:
        with pytest.raises(Exception) as caught:
            pipeline.generate(image_file, "hi", **options)
        assert_one_line_message(caught.value, *phrases)
        with pytest.raises(Exception) as caught:
            pipeline.generate(image_file, "what is \udcff here?", max_new_tokens=2)
        assert_one_line_message(caught.value, "not valid text")
        assert pipeline.generate(image_file, "hi", max_new_tokens=2).tokens  # and it still answers


def test_a_build_copied_whole_still_loads(build_copy, image_file):
    """The refusals above are not a build that refuses everything: an intact copy runs."""
    moved = build_copy.parent / "moved"
    shutil.move(build_copy, moved)
    with Pipeline.from_dir(moved, threads=1) as pipeline:
        assert len(pipeline.generate(image_file, "hi", max_new_tokens=2).tokens) == 2
