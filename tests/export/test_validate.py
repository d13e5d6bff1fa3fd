"""Per-graph validation: every graph at three sizes against transformers' modules, typed errors."""

import numpy as np
import pytest

from transprune.schedule import preset


def test_every_graph_was_checked_at_three_sizes(paper_build):
    _, manifest = paper_build
    graphs = manifest["validation"]["graphs"]
    assert list(graphs) == [g["name"] for g in manifest["graphs"]]
    for name, report in graphs.items():
        # segments add a fourth: a decode step over a generated block with slots not written yet
        assert len(set(report["cases"])) == (4 if name.startswith("segment") else 3), name
        assert report["max_error"], name
    # the segments' keys and values and the scorers' integer outputs are all compared
    assert "new_value.7" in graphs["segment_0"]["max_error"]
    assert graphs["scorer_0"]["max_error"]["kept"] == 0.0


def _run_perturbed(paper_build, graph, output, change):
    from transprune.export.validate import validate_graphs
    from transprune.runtime.build import Build
    from transprune.runtime.ort_backend import OrtBackend

    out, manifest = paper_build
    build = Build.open(out)
    backend = OrtBackend(build)

    def run(name, feeds):
        result = backend.run(name, feeds)
        if name == graph:
            result[output] = change(result[output])
        return result

    return lambda loaded: validate_graphs(manifest, build=build, loaded=loaded, schedule=preset("paper"), run=run)


def test_a_wrong_output_is_named_with_graph_output_and_error(paper_build, tiny_model):
    from transprune.export.validate import GraphMismatch

    def nudge(hidden):
        hidden = hidden.copy()
        hidden[0, -1, 0] += 0.5  # one value of the last real token
        return hidden

    validate = _run_perturbed(paper_build, "segment_1", "hidden_out", nudge)
    with pytest.raises(GraphMismatch, match=r"graph 'segment_1', output 'hidden_out' .*max error 0\.5") as caught:
        validate(tiny_model)
    assert caught.value.graph == "segment_1" and caught.value.output == "hidden_out"
    assert caught.value.error == pytest.approx(0.5, rel=1e-3)


def test_a_different_kept_token_fails_the_scorer(paper_build, tiny_model):
    from transprune.export.validate import GraphMismatch

    def shift(kept):
        kept = kept.copy()
        kept[0, 0] = (kept[0, 0] + 1) % 576 if kept[0, 0] + 1 not in kept[0] else kept[0, -1]
        return kept

    validate = _run_perturbed(paper_build, "scorer_1", "kept", shift)
    with pytest.raises(GraphMismatch, match="graph 'scorer_1', output 'kept'"):
        validate(tiny_model)


def test_padding_positions_are_not_compared_but_real_ones_are(paper_build, tiny_model):
    """Left-padding positions' keys are never attended to; corrupting one is harmless, corrupting a
    real token's key is not. (``new_key`` holds the call's new tokens only: the left padding is in
    it only in the prefill case, of batch 2 and many new tokens.)"""
    from transprune.export.validate import GraphMismatch

    def corrupt_padding(keys):
        keys = keys.copy()
        if keys.shape[0] > 1 and keys.shape[2] > 3:
            keys[1, :, 0] = 1e3  # sample 1 is left-padded by 3 in every batch-2 segment case
        return keys

    _run_perturbed(paper_build, "segment_2", "new_key.10", corrupt_padding)(tiny_model)

    def corrupt_real(keys):
        keys = keys.copy()
        keys[0, :, -1] += 1e3
        return keys

    with pytest.raises(GraphMismatch, match="new_key.10"):
        _run_perturbed(paper_build, "segment_2", "new_key.10", corrupt_real)(tiny_model)


def test_nan_is_never_within_tolerance(paper_build, tiny_model):
    from transprune.export.validate import GraphMismatch

    validate = _run_perturbed(paper_build, "head", "logits", lambda x: np.full_like(x, np.nan))
    with pytest.raises(GraphMismatch, match="graph 'head', output 'logits'"):
        validate(tiny_model)
