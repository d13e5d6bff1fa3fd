import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transprune import scoring
from transprune.schedule import Schedule


def test_transition_weight_hand_computed():
    before = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    after = torch.tensor([[[2.0, 0.0], [0.0, -1.0]]])
    # token 0: |a|/|b| = 2, cos = 1 -> exp(0) = 1;  token 1: ratio 1, cos = -1 -> exp(2)
    total = 1.0 + math.exp(2.0)
    expected = torch.tensor([[2.0 * 1.0 / total, 1.0 * math.exp(2.0) / total]])
    torch.testing.assert_close(scoring.transition_weight(before, after), expected)


def test_transition_weight_is_per_sample_and_ignores_padding():
    torch.manual_seed(0)
    before, after = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    alone = scoring.transition_weight(before, after)
    # sample 1 is the same tokens behind two padding rows with wild values
    padded_b = torch.cat([torch.randn(1, 2, 8) * 100, before], 1)
    padded_a = torch.cat([torch.randn(1, 2, 8) * 100, after], 1)
    batch_b = torch.cat([torch.cat([before, torch.randn(1, 2, 8)], 1), padded_b])
    batch_a = torch.cat([torch.cat([after, torch.randn(1, 2, 8)], 1), padded_a])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
    both = scoring.transition_weight(batch_b, batch_a, mask)
    torch.testing.assert_close(both[0, :5], alone[0])
    torch.testing.assert_close(both[1, 2:], alone[0])
    assert torch.all(both[0, 5:] == 0) and torch.all(both[1, :2] == 0)


def test_layer_ttv_sums_both_pairs():
    torch.manual_seed(1)
    a, b, c, d = (torch.randn(2, 4, 6) for _ in range(4))
    torch.testing.assert_close(
        scoring.layer_ttv(a, b, c, d), scoring.transition_weight(a, b) + scoring.transition_weight(c, d)
    )


def test_instruction_attention_hand_computed_with_gqa():
    # sequence [img0, img1, instruction]; 2 query heads share 1 KV head; head dim 1, scaling 1
    key = torch.tensor([0.0, math.log(2.0), 0.0]).view(1, 1, 3, 1)
    query = torch.ones(1, 2, 3, 1)
    query[:, 1] = 2.0  # head 1 logits [0, 2ln2, 0] -> softmax [1/6, 4/6, 1/6]
    mask = torch.zeros(1, 1, 3, 3)
    causal = torch.triu(torch.ones(3, 3, dtype=torch.bool), 1)
    mask = mask.masked_fill(causal, torch.finfo(torch.float32).min)
    weight = torch.tensor([[0.0, 0.0, 1.0]])  # only the instruction row is a query
    columns = torch.tensor([[0, 1]])
    got = scoring.instruction_attention(query, key, mask, weight, columns, scaling=1.0)
    # head 0 row 2: [1/4, 2/4, 1/4]; head 1: [1/6, 4/6, 1/6]; mean over heads, image columns
    expected = torch.tensor([[(1 / 4 + 1 / 6) / 2, (2 / 4 + 4 / 6) / 2]])
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(scoring.normalise(got).sum(), torch.tensor(1.0), atol=1e-6, rtol=0)


def test_combine_and_normalise():
    ttv = torch.tensor([[1.0, 3.0]])
    iga = torch.tensor([[2.0, 2.0]])
    torch.testing.assert_close(scoring.normalise(ttv), torch.tensor([[0.25, 0.75]]))
    ttv, iga = scoring.normalise(ttv), scoring.normalise(iga)
    torch.testing.assert_close(scoring.combine(ttv, iga, 0.5), torch.tensor([[0.375, 0.625]]))
    torch.testing.assert_close(scoring.combine(ttv, iga, 0.25), torch.tensor([[0.4375, 0.5625]]))
    assert scoring.combine(ttv, None, 0.5) is ttv and scoring.combine(None, iga, 0.5) is iga
    with pytest.raises(ValueError):
        scoring.combine(None, None, 0.5)


def test_select_kept_ties_break_toward_lower_index():
    score = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.9, 0.1]])
    assert scoring.select_kept(score, 3).tolist() == [[0, 1, 4]]
    assert scoring.select_kept(torch.zeros(1, 6), 2).tolist() == [[0, 1]]
    with pytest.raises(ValueError):
        scoring.select_kept(score, 7)


def test_kept_sequence_index_keeps_text():
    # prefix of 2, image of 4 (keep 1 and 3), suffix of 3; sample 1 left-padded by 1
    kept = torch.tensor([[1, 3], [0, 2]])
    index = scoring.kept_sequence_index(9, torch.tensor([2, 3]), 4, kept)
    assert index.tolist() == [[0, 1, 3, 5, 6, 7, 8], [0, 1, 2, 3, 5, 7, 8]]


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n_image=st.integers(1, 80),
    prefix=st.integers(0, 6),
    suffix=st.integers(0, 6),
    batch=st.integers(1, 3),
)
def test_property_kept_indices(data, n_image, prefix, suffix, batch):
    n_stages = data.draw(st.integers(1, 3))
    ratios = sorted(data.draw(st.lists(st.floats(0.01, 1.0), min_size=n_stages, max_size=n_stages, unique=True)), reverse=True)
    if any(int(n_image * r) < 1 for r in ratios):
        return
    schedule = Schedule(accumulate=(1,), prune=tuple(range(1, n_stages + 1)), ratios=tuple(ratios))
    seed = data.draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    seq = prefix + n_image + suffix
    tokens = torch.arange(seq).expand(batch, -1)  # token identity = original position
    alive, n_alive = torch.arange(n_image).expand(batch, -1), n_image
    for keep in schedule.keep_counts(n_image):
        # coarse scores so ties happen often
        score = torch.randint(0, 4, (batch, n_alive), generator=gen).float()
        kept = scoring.select_kept(score, keep)
        assert kept.shape == (batch, keep) == (batch, int(n_image * ratios[schedule.keep_counts(n_image).index(keep)]))
        for row in kept.tolist():
            assert row == sorted(set(row)) and all(0 <= i < n_alive for i in row)
        index = scoring.kept_sequence_index(tokens.shape[1], torch.full((batch,), prefix), n_alive, kept)
        tokens = torch.gather(tokens, 1, index)
        alive = torch.gather(alive, 1, kept)
        n_alive = keep
        # text tokens never dropped, in order; image tokens are exactly the kept ones
        assert tokens[:, :prefix].tolist() == [list(range(prefix))] * batch
        assert tokens[:, prefix + keep :].tolist() == [list(range(prefix + n_image, seq))] * batch
        assert torch.equal(tokens[:, prefix : prefix + keep], alive + prefix)
