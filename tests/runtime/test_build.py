"""Build.open reads a manifest into typed pieces once, and refuses a chain it cannot run."""

from __future__ import annotations

import copy

import pytest

from transprune.runtime.build import Build
from transprune.runtime.manifest import ManifestError


def test_segments_and_scorers_of_the_paper_build(paper_build):
    build = Build.open(paper_build[0])
    assert [s.layers for s in build.segments] == [(1, 7), (8, 9), (10, 12), (13, 14)]
    assert [s.position_shift for s in build.segments] == [0, 72, 216, 504]
    assert [s.has_ttv for s in build.segments] == [True, True, True, False]
    assert {i: s.name for i, s in build.scorers.items()} == {0: "scorer_0", 1: "scorer_1", 2: "scorer_2"}
    assert build.keep_counts == [504, 360, 72]
    assert build.segments[0].kv[:2] == (("past_key.1", "gen_key.1", "new_key.1"),
                                        ("past_value.1", "gen_value.1", "new_value.1"))
    assert (build.segments[0].kv_heads, build.segments[0].head_dim) == (2, 16)
    assert build.n_image == 576 and build.limits["max_text_tokens"] == 1024


def _changed(paper_build, change):
    manifest = copy.deepcopy(paper_build[1])
    change(manifest)
    return manifest


def test_a_chain_in_the_wrong_order_is_refused(paper_build):
    def swap(manifest):
        graphs = manifest["graphs"]
        graphs[3], graphs[4] = graphs[4], graphs[3]

    with pytest.raises(ManifestError, match="expected vision, embed, prefill_inputs, segment, .*re-export"):
        Build.from_manifest(paper_build[0], _changed(paper_build, swap))


def test_a_scorer_is_paired_by_its_layer_not_its_position(paper_build):
    def misplace(manifest):
        next(g for g in manifest["graphs"] if g["name"] == "scorer_1")["attrs"]["after_layer"] = 8

    with pytest.raises(ManifestError, match="scorer 'scorer_1' runs after layer 8, which ends no segment"):
        Build.from_manifest(paper_build[0], _changed(paper_build, misplace))


def test_a_malformed_entry_is_a_manifest_error_not_a_crash(paper_build):
    def drop_kv(manifest):
        del next(g for g in manifest["graphs"] if g["name"] == "segment_2")["attrs"]["kv"]

    with pytest.raises(ManifestError, match="malformed.*'kv'.*re-export"):
        Build.from_manifest(paper_build[0], _changed(paper_build, drop_kv))


def test_a_missing_prompt_section_asks_for_a_re_export(paper_build):
    from transprune.runtime.prompt import PromptEncoder

    manifest = _changed(paper_build, lambda m: m.pop("prompt"))
    with pytest.raises(ManifestError, match="no 'prompt' section; re-export"):
        PromptEncoder(Build.from_manifest(paper_build[0], manifest))


def test_a_scorer_ratio_that_contradicts_the_schedule_is_refused(paper_build):
    """The chain reads keep counts from the schedule (int(n * ratio) per image for LLaVA-NeXT), so a
    scorer recording another ratio means the manifest was edited or mixed up."""
    def edit(manifest):
        next(g for g in manifest["graphs"] if g["name"] == "scorer_1")["attrs"]["keep_ratio"] = 0.5

    with pytest.raises(ManifestError, match="scorer 'scorer_1' keeps 0.5 .*schedule says 0.625; re-export"):
        Build.from_manifest(paper_build[0], _changed(paper_build, edit))


def test_a_fixed_count_build_whose_image_range_disagrees_is_refused(paper_build):
    def edit(manifest):
        manifest["limits"]["image_tokens"] = {"min": 576, "max": 600}

    with pytest.raises(ManifestError, match="malformed.*image_tokens"):
        Build.from_manifest(paper_build[0], _changed(paper_build, edit))


def test_the_next_build_reads_as_anyres(next_build):
    build = Build.open(next_build[0])
    assert build.anyres and build.n_image is None and build.tile_tokens == 576
    assert build.image_tokens == (576, 2928)
    assert [s.position_shift for s in build.segments] == [0, None, None, None]
    assert [s.keep for s in build.scorers.values()] == [None] * 3
    assert build.keep_counts_for(2340) == [2047, 1462, 292]
