"""Prefill FLOPs of the LLaVA decoder under a pruning schedule (docs/DESIGN.md §2). Pure Python.

Conventions (so the numbers can be checked by hand):

* One multiply-add counts as ONE FLOP, as in the paper. Multiply by 2 for the "2 FLOPs per MAC"
  convention that hardware datasheets use.
* A decoder layer that processes n tokens costs ``4*n*d^2 + 2*n^2*d + 3*n*d*m``
  (q/k/v/o projections, the QK^T and AV products, the three FFN matrices; d hidden, m FFN width).
  Norms, RoPE, softmax, the vision tower, the projector and lm_head are not counted. The 4*n*d^2
  term assumes full multi-head attention (k/v as wide as q); for grouped-query models it is the
  paper's formula, not the exact count, and we keep it so figures stay comparable to the paper.
* Three figures are reported:
  1. paper convention: n = IMAGE tokens alive at each layer, text tokens ignored
     (LLaVA-1.5-7B, paper schedule: 3.82 -> 1.56 TFLOPs, 40.8%);
  2. whole prompt: n = image tokens alive + ``text_tokens`` (text is never pruned);
  3. IGA scoring overhead, only when the criterion uses IGA: at each prune point p the scorer runs
     layer p+1's input RMSNorm and q_proj/k_proj on the hidden states present at that point
     (image tokens alive BEFORE this point's pruning, plus text). Per prune point we count
     ``n_text*d*d`` (q_proj; an upper bound: every text token treated as a query, though only the
     instruction after the image is) + ``n*d*(num_kv_heads*head_dim)`` (k_proj, all tokens)
     + ``n_text*n*d`` (query-key scores). The norm (O(n*d)) and softmax are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TransPruneError
from .presets import ModelPreset
from .schedule import Schedule

TERA = 1e12


def layer_flops(n: int, d: int, m: int) -> int:
    """The paper's per-layer prefill cost for n tokens: 4*n*d^2 + 2*n^2*d + 3*n*d*m."""
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


def iga_flops(*, n: int, n_text: int, d: int, kv_width: int) -> int:
    """Cost of one IGA scoring pass over n tokens (n_text of them text): q_proj for the text
    tokens, k_proj for all tokens (kv_width = num_kv_heads*head_dim), and the scores.

    Why this is less than docs/DESIGN.md's "about 2% of baseline": the reference code projects q, k AND v
    for every token and forms the full n x n score matrix, i.e. about 3*n*d^2 + n^2*d per prune
    point, which for LLaVA-1.5-7B/paper/64 text tokens is about 2.0% of the whole-prompt baseline.
    We compute queries only for text tokens and skip v_proj (it only fed RoPE in the reference
    code), so the count is about 0.73% — k_proj over all tokens dominates.
    """
    return n_text * d * d + n * d * kv_width + n_text * n * d


def _ratio(part: float, whole: float) -> float:
    # A model with no tokens at all costs nothing either way; call that "no change".
    return part / whole if whole else 1.0


@dataclass(frozen=True)
class FlopsReport:
    """Prefill FLOPs (in TFLOPs, one multiply-add = one FLOP) for one model and schedule."""

    model: ModelPreset
    schedule: Schedule
    text_tokens: int
    per_layer_image_tokens: tuple[int, ...]
    baseline_tflops: float  # paper convention: image tokens only
    pruned_tflops: float
    whole_baseline_tflops: float  # image + text tokens
    whole_pruned_tflops: float
    iga_tflops: float  # 0.0 unless the criterion uses IGA

    @property
    def ratio(self) -> float:
        return _ratio(self.pruned_tflops, self.baseline_tflops)

    @property
    def whole_ratio(self) -> float:
        return _ratio(self.whole_pruned_tflops, self.whole_baseline_tflops)

    @property
    def whole_with_iga_tflops(self) -> float:
        return self.whole_pruned_tflops + self.iga_tflops

    @property
    def whole_with_iga_ratio(self) -> float:
        return _ratio(self.whole_with_iga_tflops, self.whole_baseline_tflops)

    def to_dict(self) -> dict:
        t = self.model.text
        return {
            "model": {
                "name": self.model.name,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_layers": t.num_layers,
                "num_kv_heads": t.num_kv_heads,
                "head_dim": t.head_dim,
                "n_image_tokens": self.model.n_image_tokens,
            },
            "schedule": self.schedule.to_dict(),
            "per_layer_image_tokens": list(self.per_layer_image_tokens),
            "baseline_tflops": self.baseline_tflops,
            "pruned_tflops": self.pruned_tflops,
            "ratio": self.ratio,
            "whole_prompt": {
                "text_tokens": self.text_tokens,
                "baseline_tflops": self.whole_baseline_tflops,
                "pruned_tflops": self.whole_pruned_tflops,
                "ratio": self.whole_ratio,
            },
            "iga_tflops": self.iga_tflops,
            "whole_prompt_with_iga": {
                "pruned_tflops": self.whole_with_iga_tflops,
                "ratio": self.whole_with_iga_ratio,
            },
        }


def flops_report(*, model: ModelPreset, schedule: Schedule, text_tokens: int = 64) -> FlopsReport:
    """All three figures for ``model`` pruned by ``schedule`` with ``text_tokens`` text tokens."""
    if isinstance(text_tokens, bool) or not isinstance(text_tokens, int) or text_tokens < 0:
        raise TransPruneError(f"text_tokens must be an integer >= 0, got {text_tokens!r}")
    t = model.text
    d, m, num_layers, n_image = t.hidden_size, t.intermediate_size, t.num_layers, model.n_image_tokens
    schedule.check_model(num_layers=num_layers, n_image=n_image)

    per_layer = schedule.tokens_per_layer(num_layers=num_layers, n_image=n_image)
    baseline = sum(layer_flops(n_image, d, m) for _ in range(num_layers))
    pruned = sum(layer_flops(n, d, m) for n in per_layer)
    whole_baseline = sum(layer_flops(n_image + text_tokens, d, m) for _ in range(num_layers))
    whole_pruned = sum(layer_flops(n + text_tokens, d, m) for n in per_layer)

    iga = 0
    if schedule.uses_iga:
        # Image tokens alive when each prune point is scored: those that layer p processed
        # (per_layer[p - 1], layers being 1-based), i.e. before this point's own pruning.
        kv_width = t.num_kv_heads * t.head_dim
        iga = sum(
            iga_flops(n=per_layer[p - 1] + text_tokens, n_text=text_tokens, d=d, kv_width=kv_width)
            for p in schedule.prune
        )

    return FlopsReport(
        model=model,
        schedule=schedule,
        text_tokens=text_tokens,
        per_layer_image_tokens=tuple(per_layer),
        baseline_tflops=baseline / TERA,
        pruned_tflops=pruned / TERA,
        whole_baseline_tflops=whole_baseline / TERA,
        whole_pruned_tflops=whole_pruned / TERA,
        iga_tflops=iga / TERA,
    )
