"""Spec -> torch module with just that graph's weights (loaded lazily from the checkpoint)."""

from __future__ import annotations

import torch

from transprune.errors import TransPruneError
from transprune.schedule import Schedule

from . import graphs
from .specs import GraphSpec, ModelFacts
from .weights import CheckpointWeights


_SAFETENSORS_FLOAT = {"F16", "BF16", "F32", "F64"}
_SAFETENSORS_INT = {"I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class MetaWeights:
    """A weights view that hands out shape-only ``meta`` tensors and remembers where each came from.

    Graph modules are built and traced on these, so building a 20-layer segment of a 7B model
    costs no memory; the ONNX writer later streams each initializer's real values from the
    checkpoint (``load``), cast to the export dtype, one tensor at a time.
    """

    def __init__(self, weights: CheckpointWeights, dtype: torch.dtype) -> None:
        self.weights, self.dtype = weights, dtype
        self._sources: dict[int, str] = {}  # storage identity of a handed-out tensor -> checkpoint name

    def __getitem__(self, name: str) -> torch.Tensor:
        shape, kind = self.weights.describe(name)
        dtype = self.dtype if kind in _SAFETENSORS_FLOAT else _SAFETENSORS_INT.get(kind)
        if dtype is None:
            raise TransPruneError(f"{self.weights.directory}: tensor {name!r} has unsupported dtype {kind}")
        tensor = torch.empty(shape, dtype=dtype, device="meta")
        self._sources[tensor.untyped_storage()._cdata] = name
        return tensor

    def __contains__(self, name: str) -> bool:
        return name in self.weights

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def source(self, parameter: torch.Tensor) -> str | None:
        """The checkpoint name a module parameter was built from (nn.Parameter shares storage)."""
        return self._sources.get(parameter.untyped_storage()._cdata)

    def load(self, name: str) -> torch.Tensor:
        """The real values of checkpoint tensor ``name`` in the export dtype."""
        tensor = self.weights[name]
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor


def text_config_dict(config) -> dict:
    """transformers' text config as a plain dict with the few fields the graphs read, normalised."""
    text = config.text_config.to_dict()
    rope = text.get("rope_parameters") or {}
    if text.get("rope_theta") is None:
        text["rope_theta"] = rope.get("rope_theta", 10000.0)
    if rope.get("rope_type", "default") != "default":
        raise TransPruneError(f"RoPE scaling {rope.get('rope_type')!r} is not supported by the exporter yet")
    text["head_dim"] = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    text["num_key_value_heads"] = text.get("num_key_value_heads") or text["num_attention_heads"]
    return text


def model_facts(config) -> ModelFacts:
    text = text_config_dict(config)
    vision = config.vision_config
    anyres = getattr(config, "model_type", "llava") == "llava_next"
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    if strategy != "default":
        raise TransPruneError(f"vision_feature_select_strategy {strategy!r} is not supported by the exporter yet; "
                              f"LLaVA-1.5 and LLaVA-NeXT use 'default' (the CLS token dropped)")
    tile_tokens = (vision.image_size // vision.patch_size) ** 2
    return ModelFacts(
        hidden_size=text["hidden_size"], num_layers=text["num_hidden_layers"],
        num_kv_heads=text["num_key_value_heads"], head_dim=text["head_dim"], vocab_size=text["vocab_size"],
        image_size=vision.image_size, n_image=None if anyres else tile_tokens,
        image_token_id=config.image_token_id,
        eos_token_id=_first_id(text.get("eos_token_id")), pad_token_id=_first_id(text.get("pad_token_id")),
        anyres=anyres, tile_tokens=tile_tokens if anyres else None,
    )


def _first_id(value):
    """Token ids in configs are an int, a list of ints (several EOS ids) or None."""
    return value[0] if isinstance(value, list) and value else value


def build_module(spec: GraphSpec, w: MetaWeights, config, schedule: Schedule):
    """(module, variadic_from): variadic_from is where forward's *args start (for dynamic shapes).

    The module's parameters are shape-only tensors from ``w``; it is for tracing, not running.
    """
    text = text_config_dict(config)
    if spec.kind == "vision":
        vision = graphs.AnyresVisionGraph if spec.attrs.get("anyres") else graphs.VisionGraph
        return vision(w, vision_config=config.vision_config.to_dict(), feature_layer=config.vision_feature_layer,
                      projector_act=config.projector_hidden_act), None
    if spec.kind == "embed":
        return graphs.EmbedGraph(w), None
    if spec.kind == "prefill_inputs":
        return graphs.PrefillInputsGraph(config.image_token_id), None
    if spec.kind == "segment":
        first, last = spec.layers
        return graphs.SegmentGraph(w, first=first, last=last, text_config=text,
                                   ttv_layers=tuple(spec.attrs["ttv_layers"])), 3
    if spec.kind == "scorer":
        a = spec.attrs
        module = graphs.ScorerGraph(w if a["uses_iga"] else None, next_layer=a["after_layer"] + 1, text_config=text,
                                    uses_ttv=a["uses_ttv"], uses_iga=a["uses_iga"], alpha=a["alpha"])
        return module, 6
    if spec.kind == "head":
        return graphs.HeadGraph(w, text_config=text), None
    raise ValueError(f"unknown graph kind {spec.kind!r}")
