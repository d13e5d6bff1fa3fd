"""The model family is decided once, from the config's model_type or a preset's architecture."""

import pytest

from transprune.errors import TransPruneError
from transprune.family import FAMILIES, LLAVA, LLAVA_NEXT, family_named, family_of, family_of_model_type
from transprune.presets import PRESETS, preset_from_hf_config


def test_each_family_is_found_by_its_model_type_and_its_name():
    for family in FAMILIES:
        assert family_of_model_type(family.model_type) is family
        assert family_named(family.name) is family
    assert (LLAVA.anyres, LLAVA_NEXT.anyres) == (False, True)


def test_other_models_are_refused_with_what_is_supported():
    with pytest.raises(TransPruneError, match=r"ckpt holds a 'llama' model.*LlavaForConditionalGeneration or "
                                              r"LlavaNextForConditionalGeneration"):
        family_of_model_type("llama", where="ckpt")
    with pytest.raises(TransPruneError, match="unknown model family 'qwen'"):
        family_named("qwen")


def test_presets_and_configs_agree_on_the_family(tiny_model):
    assert {p.family for p in PRESETS.values()} == set(FAMILIES)
    assert PRESETS["tiny-next"].family is LLAVA_NEXT and PRESETS["tiny"].family is LLAVA
    assert family_of(tiny_model.model.config) is LLAVA
    assert family_of(tiny_model.model.config).transformers_class("model") is type(tiny_model.model)
    config = tiny_model.model.config.to_dict()
    assert preset_from_hf_config(config, name="x").family is LLAVA
