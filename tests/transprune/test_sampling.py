import numpy as np
import pytest

from transprune.errors import TransPruneError
from transprune.sampling import Sampler


def test_greedy_is_argmax_with_lowest_id_on_ties():
    logits = np.array([[0.1, 0.9, 0.9, -1.0], [3.0, 0.0, 2.0, 3.0]], dtype=np.float32)
    assert Sampler()(logits).tolist() == [1, 0]


def test_seeded_sampling_repeats_and_follows_the_distribution():
    logits = np.log(np.array([[0.5, 0.3, 0.2]]))
    draws = lambda seed: [int(Sampler(temperature=1.0, seed=seed)(logits)[0]) for _ in range(1)]  # noqa: E731
    assert draws(7) == draws(7)
    sampler = Sampler(temperature=1.0, seed=0)
    counts = np.bincount([int(sampler(logits)[0]) for _ in range(4000)], minlength=3) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.2], atol=0.03)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([[0.1, 0.6, 0.3]]))
    sampler = Sampler(temperature=1.0, top_p=0.5, seed=3)
    assert {int(sampler(logits)[0]) for _ in range(200)} == {1}
    sampler = Sampler(temperature=1.0, top_p=0.8, seed=3)
    assert {int(sampler(logits)[0]) for _ in range(400)} == {1, 2}


def test_low_temperature_approaches_greedy():
    logits = np.array([[1.0, 1.5, 0.2]])
    sampler = Sampler(temperature=1e-3, seed=1)
    assert all(int(sampler(logits)[0]) == 1 for _ in range(50))


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1.0), "temperature -1.0 must be a number >= 0"),
    (dict(temperature="0.5"), "temperature '0.5' must be a number"),
    (dict(temperature=float("nan")), "temperature nan must be a number >= 0"),
    (dict(temperature=1.0, top_p=0.0), "top_p 0.0 must be a number in"),
    (dict(temperature=1.0, top_p=1.5), "top_p 1.5 must be a number in"),
    (dict(temperature=1.0, top_p=None), "top_p None must be a number in"),
    (dict(seed=-1), r"seed -1 must be an integer from 0"),
    (dict(seed=2**64), r"seed \d+ must be an integer from 0"),
    (dict(seed=1.5), r"seed 1.5 must be an integer"),
    (dict(seed=True), r"seed True must be an integer"),
])
def test_bad_sampler_settings(kwargs, message):
    with pytest.raises(TransPruneError, match=message):
        Sampler(**kwargs)
