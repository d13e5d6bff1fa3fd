"""The scorers' ``query_rows``: IGA's queries are only the trailing rows that can hold instruction
text, and the result is the one every row as a query gives (non-instruction rows weigh 0)."""

import numpy as np
import pytest

from transprune.errors import TransPruneError
from transprune.runtime.build import Build
from transprune.runtime.chain import query_rows


def _left_padded_batch(build, seq, image_start, n_alive, *, seed=0):
    """Scorer feeds of a batch of 2 whose samples have different image spans and text after it."""
    rng = np.random.default_rng(seed)
    hidden = build.manifest["model"]["facts"]["hidden_size"]
    mask = np.ones((2, seq), dtype=np.int64)
    mask[1, :3] = 0  # sample 1 is left-padded
    return {"hidden": rng.standard_normal((2, seq, hidden)).astype(np.float32),
            "position_ids": np.maximum(np.cumsum(mask, 1) - 1, 0), "attention_mask": mask,
            "image_start": np.array(image_start, dtype=np.int64),
            "alive": np.stack([np.sort(rng.permutation(build.n_image)[:n_alive]) for _ in range(2)]),
            "ttv_sum": np.abs(rng.standard_normal((2, n_alive))).astype(np.float32),
            "ttv": np.abs(rng.standard_normal((2, seq))).astype(np.float32)}


def test_query_rows_is_the_longest_text_after_an_image_at_least_one():
    assert query_rows(40, np.array([6, 9]), 20) == 14  # sample 0 has 14 rows after its image, sample 1 11
    assert query_rows(40, np.array([9, 6]), 20) == 14
    assert query_rows(26, np.array([6]), 20) == 1  # nothing after the image: one row, weighing 0
    assert query_rows(40, np.array([6]), 20).dtype == np.int64 and query_rows(40, np.array([6]), 20).ndim == 0


def test_scorer_validation_has_samples_with_different_image_spans(paper_build):
    from transprune.export.kinds import kind_of
    from transprune.export.kinds.base import CaseMaker

    out, manifest = paper_build
    build = Build.open(out)
    scorer = build.graphs["scorer_1"]
    assert [t.name for t in scorer.inputs][5:7] == ["keep", "query_rows"]
    cases = list(kind_of("scorer").validation_cases(scorer, CaseMaker(build, np.float32, n_image=build.n_image)))
    uneven = [c for c in cases if len(set(c.feeds["image_start"].tolist())) > 1]
    assert len(uneven) == 2
    for case in cases:
        seq, n_alive = case.feeds["hidden"].shape[1], case.feeds["alive"].shape[1]
        after = seq - case.feeds["image_start"] - n_alive
        assert case.feeds["query_rows"] == after.max() < seq
    # ... and every one of them matched the reference when the build was validated
    assert len(manifest["validation"]["graphs"]["scorer_1"]["cases"]) == 3


@pytest.mark.parametrize("image_start", [(5, 9), (12, 4)])
def test_scorer_with_query_rows_equals_every_row_as_a_query_and_the_reference(paper_build, tiny_checkpoint,
                                                                              image_start):
    from transprune.graph_reference import open_reference_graphs
    from transprune.runtime.ort_backend import OrtBackend

    build = Build.open(paper_build[0])
    seq, n_alive = build.n_image + 30, build.n_image
    feeds = _left_padded_batch(build, seq, image_start, n_alive)
    feeds["keep"] = np.array(build.scorers[0].keep, dtype=np.int64)
    rows = query_rows(seq, feeds["image_start"], n_alive)
    assert 1 < rows < seq
    backend = OrtBackend(build)
    got = backend.run("scorer_0", {**feeds, "query_rows": rows})
    every_row = backend.run("scorer_0", {**feeds, "query_rows": np.array(seq, dtype=np.int64)})
    reference = open_reference_graphs(build, checkpoint=tiny_checkpoint).run("scorer_0", {**feeds, "query_rows": rows})
    for name, value in got.items():
        if value.dtype == np.int64:
            np.testing.assert_array_equal(value, every_row[name], err_msg=name)
            np.testing.assert_array_equal(value, reference[name], err_msg=name)
        else:
            np.testing.assert_allclose(value, every_row[name], rtol=1e-5, atol=1e-7, err_msg=name)
            np.testing.assert_allclose(value, reference[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert np.abs(got["iga_score"]).max() > 0


def test_query_rows_out_of_range_is_refused(paper_build):
    """As ``keep``: the TensorRT profile holds 1..(text after the image) and the runtime refuses a value
    outside it; onnxruntime fails on more rows than the sequence has (or a negative count)."""
    import onnxruntime

    from transprune.export.tensorrt.profiles import build_profiles, shape_limits
    from transprune.runtime.ort_backend import OrtBackend
    from transprune.runtime.tensorrt.backend import check_feed_shapes

    build = Build.open(paper_build[0])
    limits = shape_limits(build, max_batch=2, max_text_tokens=64, max_new_tokens=8)
    profile = build_profiles(build, limits)["scorer_0"][0]
    spec = profile.input("query_rows")
    assert spec.value and (spec.min, spec.opt, spec.max) == ((1,), (64,), (64,))
    seq, n_alive = build.n_image + 30, build.n_image
    feeds = _left_padded_batch(build, seq, (5, 9), n_alive)
    feeds["keep"] = np.array(build.scorers[0].keep, dtype=np.int64)
    shapes = {n: np.shape(v) for n, v in feeds.items()}
    meta = profile.to_dict()
    for value in (0, 65):
        with pytest.raises(TransPruneError, match=rf"input 'query_rows' has values \({value},\), the engine was "
                                                  r"built for \(1,\)\.\.\(64,\)"):
            check_feed_shapes("scorer_0", meta, shapes, {"keep": (int(feeds["keep"]),), "query_rows": (value,)},
                              limits.to_dict())
    backend = OrtBackend(build)
    for value in (seq + 1, -1):
        with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.Fail):
            backend.run("scorer_0", {**feeds, "query_rows": np.array(value, dtype=np.int64)})
