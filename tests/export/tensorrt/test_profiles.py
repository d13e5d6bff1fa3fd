"""TensorRT profiles derived from the manifest and schedule: exact min/opt/max, and the real chain's
feeds always inside them."""

from __future__ import annotations

import pytest

from transprune.errors import TransPruneError
from transprune.export.tensorrt.profiles import build_profiles, kv_cache_bytes, shape_limits
from transprune.runtime.build import Build
from transprune.schedule import Schedule, preset


def _ranges(profiles, graph, phase, name):
    profile = next(p for p in profiles[graph] if p.phase == phase)
    spec = profile.input(name)
    return spec.min, spec.opt, spec.max


def test_paper_schedule_on_llava_1_5_7b_with_default_limits(spec_build):
    build = spec_build("llava-1.5-7b", preset("paper"))
    limits = shape_limits(build)
    # 4096 positions - 576 image - 1024 text tokens leave 2496 for the answer
    assert (limits.max_batch, limits.max_text_tokens, limits.max_new_tokens) == (1, 1024, 2496)
    profiles = build_profiles(build, limits)
    assert list(profiles) == ["vision", "embed", "prefill_inputs", "segment_0", "scorer_0", "segment_1",
                              "scorer_1", "segment_2", "scorer_2", "segment_3", "head"]
    assert [p.phase for p in profiles["segment_0"]] == ["prefill", "decode"]
    assert [p.phase for p in profiles["scorer_0"]] == ["prefill"]
    assert [p.phase for p in profiles["vision"]] == ["prefill"]
    assert _ranges(profiles, "vision", "prefill", "pixel_values") == ((1, 3, 336, 336),) * 3
    assert _ranges(profiles, "embed", "prefill", "input_ids") == ((1, 577), (1, 640), (1, 1600))
    assert _ranges(profiles, "embed", "decode", "input_ids") == ((1, 1),) * 3
    # prefill: the image tokens alive before each segment plus 1..1024 text tokens, empty cache
    for graph, image in (("segment_0", 576), ("segment_1", 504), ("segment_2", 360), ("segment_3", 72)):
        assert _ranges(profiles, graph, "prefill", "hidden") == (
            (1, image + 1, 4096), (1, image + 64, 4096), (1, image + 1024, 4096))
        layer = build.segments[int(graph[-1])].layers[0]
        assert _ranges(profiles, graph, "prefill", f"past_key.{layer}") == ((1, 32, 0, 128),) * 3
        assert _ranges(profiles, graph, "prefill", f"gen_key.{layer}") == ((1, 32, 0, 128),) * 3
    # decode: one token over the kept prompt's block (opt: 64 text tokens) and the generated block,
    # room for the whole answer (opt 64; min 0, a host that keeps it at its exact length)
    assert _ranges(profiles, "segment_0", "decode", "past_value.1") == (
        (1, 32, 577, 128), (1, 32, 640, 128), (1, 32, 1600, 128))
    assert _ranges(profiles, "segment_0", "decode", "gen_value.1") == (
        (1, 32, 0, 128), (1, 32, 64, 128), (1, 32, 2496, 128))
    assert _ranges(profiles, "segment_0", "decode", "attention_mask") == ((1, 578), (1, 705), (1, 4097))
    assert _ranges(profiles, "segment_1", "decode", "past_key.8") == (
        (1, 32, 505, 128), (1, 32, 568, 128), (1, 32, 1528, 128))
    assert _ranges(profiles, "segment_2", "decode", "past_key.12") == (
        (1, 32, 361, 128), (1, 32, 424, 128), (1, 32, 1384, 128))
    assert _ranges(profiles, "segment_3", "decode", "past_key.32") == (
        (1, 32, 73, 128), (1, 32, 136, 128), (1, 32, 1096, 128))
    assert _ranges(profiles, "segment_3", "decode", "gen_key.32") == (
        (1, 32, 0, 128), (1, 32, 64, 128), (1, 32, 2496, 128))
    assert _ranges(profiles, "segment_3", "decode", "position_ids") == ((1, 1),) * 3
    # scorers: the sequence before the prune, the alive image tokens, K as a shape-tensor value
    assert _ranges(profiles, "scorer_1", "prefill", "hidden") == ((1, 505, 4096), (1, 568, 4096), (1, 1528, 4096))
    assert _ranges(profiles, "scorer_1", "prefill", "alive") == ((1, 504),) * 3
    assert _ranges(profiles, "scorer_1", "prefill", "ttv_sum") == ((1, 504),) * 3
    assert _ranges(profiles, "scorer_1", "prefill", "image_start") == ((1,),) * 3
    keep = next(p for p in profiles["scorer_2"]).input("keep")
    assert keep.value and (keep.min, keep.opt, keep.max) == ((72,), (72,), (72,))
    # IGA's query rows: the text after the image, 1..1024 (a value, as keep)
    rows = next(p for p in profiles["scorer_2"]).input("query_rows")
    assert rows.value and (rows.min, rows.opt, rows.max) == ((1,), (64,), (1024,))
    assert _ranges(profiles, "head", "prefill", "hidden") == ((1, 73, 4096), (1, 136, 4096), (1, 1096, 4096))
    assert _ranges(profiles, "head", "decode", "hidden") == ((1, 1, 4096),) * 3


def test_batch_text_and_answer_limits_narrow_every_range(spec_build):
    build = spec_build("llava-1.5-7b", preset("paper"))
    profiles = build_profiles(build, shape_limits(build, max_batch=4, max_text_tokens=256, max_new_tokens=128))
    assert _ranges(profiles, "vision", "prefill", "pixel_values") == (
        (1, 3, 336, 336), (1, 3, 336, 336), (4, 3, 336, 336))
    assert _ranges(profiles, "segment_0", "prefill", "hidden") == ((1, 577, 4096), (1, 640, 4096), (4, 832, 4096))
    # the prompt block holds 576 + 256 positions at most, the generated block 128
    assert _ranges(profiles, "segment_0", "decode", "past_key.1") == (
        (1, 32, 577, 128), (1, 32, 640, 128), (4, 32, 832, 128))
    assert _ranges(profiles, "segment_0", "decode", "gen_key.1") == (
        (1, 32, 0, 128), (1, 32, 64, 128), (4, 32, 128, 128))
    assert _ranges(profiles, "segment_3", "decode", "past_key.13") == (
        (1, 32, 73, 128), (1, 32, 136, 128), (4, 32, 328, 128))
    # short limits cap the opt values too
    small = build_profiles(build, shape_limits(build, max_text_tokens=16, max_new_tokens=8))
    assert _ranges(small, "segment_1", "prefill", "hidden") == ((1, 505, 4096), (1, 520, 4096), (1, 520, 4096))
    assert _ranges(small, "segment_1", "decode", "past_key.8") == (
        (1, 32, 505, 128), (1, 32, 520, 128), (1, 32, 520, 128))
    assert _ranges(small, "segment_1", "decode", "gen_key.8") == ((1, 32, 0, 128), (1, 32, 8, 128), (1, 32, 8, 128))


def test_layer_shifted_schedule_and_no_pruning(spec_build):
    # one of the paper's Table 9 shifts: prune after layers 8, 10 and 13
    shifted = Schedule(accumulate=tuple(range(8, 14)), prune=(8, 10, 13), ratios=(0.875, 0.625, 0.125),
                       name="shift+1")
    build = spec_build("llava-1.5-7b", shifted)
    profiles = build_profiles(build, shape_limits(build, max_text_tokens=128, max_new_tokens=64))
    assert [s.layers for s in build.segments] == [(1, 8), (9, 10), (11, 13), (14, 32)]
    assert _ranges(profiles, "segment_1", "decode", "past_key.9") == (
        (1, 32, 505, 128), (1, 32, 568, 128), (1, 32, 632, 128))
    assert _ranges(profiles, "scorer_2", "prefill", "hidden") == ((1, 361, 4096), (1, 424, 4096), (1, 488, 4096))
    none = spec_build("llava-1.5-7b", preset("none"))
    profiles = build_profiles(none, shape_limits(none, max_text_tokens=128, max_new_tokens=64))
    assert [name for name in profiles if name.startswith(("segment", "scorer"))] == ["segment_0"]
    assert _ranges(profiles, "segment_0", "decode", "past_key.32") == (
        (1, 32, 577, 128), (1, 32, 640, 128), (1, 32, 704, 128))
    assert _ranges(profiles, "head", "prefill", "hidden") == ((1, 577, 4096), (1, 640, 4096), (1, 704, 4096))


def test_kv_cache_bytes_follow_the_kept_tokens(spec_build):
    limits_args = dict(max_text_tokens=100, max_new_tokens=50)
    paper = spec_build("llava-1.5-7b", preset("paper"))
    none = spec_build("llava-1.5-7b", preset("none"))
    per_position = 2 * 32 * 128 * 2  # key + value, 32 heads x 128, fp16, per layer
    # layers 1-7 keep 576 image tokens, 8-9 504, 10-12 360, 13-32 72; one buffer per tensor
    positions = 7 * 576 + 2 * 504 + 3 * 360 + 20 * 72 + 32 * 150
    assert kv_cache_bytes(paper, shape_limits(paper, **limits_args)) == per_position * positions
    assert kv_cache_bytes(none, shape_limits(none, **limits_args)) == per_position * 32 * (576 + 150)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_text_tokens=2000), r"--max-text-tokens 2000 must lie in 1\.\.1024 .*re-export"),
    (dict(max_text_tokens=0), r"--max-text-tokens 0 must lie in 1\.\.1024"),
    (dict(max_batch=0), "--max-batch 0 must be a positive integer"),
    (dict(max_new_tokens=2497), r"--max-new-tokens 2497 must lie in 1\.\.2496 \(4096 positions minus 576 image"),
])
def test_limits_outside_the_build_are_refused(spec_build, kwargs, message):
    build = spec_build("llava-1.5-7b", preset("paper"))
    with pytest.raises(TransPruneError, match=message):
        shape_limits(build, **kwargs)


def test_the_real_chain_feeds_fit_the_profiles_of_their_phase(paper_build):
    """Every input of every graph call in a real onnxruntime generation of the tiny build (prefill
    and two decode steps) lies within the min/max of the profile for its phase."""
    from transprune.export.tensorrt.engines import record_chain_feeds

    build = Build.open(paper_build[0])
    profiles = build_profiles(build, shape_limits(build, max_text_tokens=64, max_new_tokens=8))
    feeds = record_chain_feeds(build, prompt="What is in the picture?")
    phases = {name: [p.phase for p in graph] for name, graph in profiles.items()}
    assert {key for key in feeds} == {(name, phase) for name, graph in phases.items() for phase in graph}
    for (graph, phase), calls in feeds.items():
        profile = next(p for p in profiles[graph] if p.phase == phase)
        for call in calls:
            assert set(call) == {i.name for i in profile.inputs}
            for spec in profile.inputs:
                got = tuple(call[spec.name].reshape(-1).tolist()) if spec.value else call[spec.name].shape
                assert len(got) == len(spec.min), (graph, phase, spec.name)
                assert all(lo <= g <= hi for lo, g, hi in zip(spec.min, got, spec.max)), (graph, spec.name, got)
    assert len(feeds[("segment_2", "decode")]) == 2


def test_llava_next_7b_profiles_cover_every_image_size(spec_build):
    """LLaVA-NeXT: an image gives 576 (base tile only) .. 2928 (2 x 2 tiles filled) tokens, so every
    image count is a range, tuned (opt) for a 640x480 photo: 5 tiles, 36 of 48 grid rows kept,
    576 + 36 * 48 + 36 = 2340 tokens; each scorer's K is int(n * ratio) over that range."""
    from transprune.export.tensorrt.profiles import alive_ranges, image_token_range, kv_cache_bytes_for

    build = spec_build("llava-next-7b", preset("paper"))
    assert build.anyres and build.image_tokens == (576, 2928)
    limits = shape_limits(build)
    # 4096 positions - 2928 image - 1024 text tokens leave 144 for the answer
    assert (limits.max_text_tokens, limits.max_new_tokens) == (1024, 144)
    image = image_token_range(build)
    assert (image.min, image.opt, image.max) == (576, 2340, 2928)
    assert [(r.min, r.opt, r.max) for r in alive_ranges(build)] == [
        (576, 2340, 2928), (504, 2047, 2562), (360, 1462, 1830), (72, 292, 366)]
    profiles = build_profiles(build, limits)
    assert _ranges(profiles, "vision", "prefill", "pixel_values") == (
        (1, 3, 336, 336), (5, 3, 336, 336), (5, 3, 336, 336))
    assert _ranges(profiles, "vision", "prefill", "pack_index") == ((1, 576), (1, 2340), (1, 2928))
    assert _ranges(profiles, "prefill_inputs", "prefill", "image_features") == (
        (1, 576, 4096), (1, 2340, 4096), (1, 2928, 4096))
    assert _ranges(profiles, "embed", "prefill", "input_ids") == ((1, 577), (1, 2404), (1, 3952))
    assert _ranges(profiles, "segment_1", "prefill", "hidden") == ((1, 505, 4096), (1, 2111, 4096),
                                                                   (1, 3586, 4096))
    # decode over the kept prompt (2562 + 1024 positions at most) and the answer (144)
    assert _ranges(profiles, "segment_1", "decode", "past_key.8") == (
        (1, 32, 505, 128), (1, 32, 2047 + 64, 128), (1, 32, 3586, 128))
    assert _ranges(profiles, "segment_1", "decode", "gen_key.8") == (
        (1, 32, 0, 128), (1, 32, 64, 128), (1, 32, 144, 128))
    assert _ranges(profiles, "scorer_0", "prefill", "alive") == ((1, 576), (1, 2340), (1, 2928))
    for graph, keep in (("scorer_0", (504, 2047, 2562)), ("scorer_2", (72, 292, 366))):
        spec = profiles[graph][0].input("keep")
        assert spec.value and (spec.min, spec.opt, spec.max) == tuple((k,) for k in keep)
    # query rows: up to the text, plus what a smaller image leaves of the sequence (2928 - 576 for scorer_0)
    for graph, most in (("scorer_0", 1024 + 2352), ("scorer_2", 1024 + 1830 - 360)):
        spec = profiles[graph][0].input("query_rows")
        assert spec.value and (spec.min, spec.opt, spec.max) == ((1,), (64,), (most,))
    # the KV cache is sized for the largest image at every layer
    per_layer = [2928] * 7 + [2562] * 2 + [1830] * 3 + [366] * 20
    assert kv_cache_bytes(build, limits) == kv_cache_bytes_for(image_tokens_per_layer=per_layer, kv_heads=32,
                                                               head_dim=128, itemsize=2, limits=limits)


def test_llava_next_keep_beyond_tensorrt_topk_limit_is_refused(spec_build):
    """With a 3 x 3 pinpoint (and 8192 positions) an image gives up to 5832 tokens; keeping 87.5% of them needs TopK's
    K = 5103, above TensorRT's limit of 3840: the profile is refused with the fix."""
    build = spec_build("llava-next-7b", preset("paper"))
    build.manifest["image_preprocess"]["grid_pinpoints"].append([1008, 1008])
    build.limits["image_tokens"]["max"] = 576 + 72 * 73
    build.limits["max_total_tokens"] = 8192  # as if the model had the positions for it
    with pytest.raises(TransPruneError, match="keeps up to 5103 .*K < 3840"):
        build_profiles(build, shape_limits(build, max_text_tokens=16, max_new_tokens=8))
