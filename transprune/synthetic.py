"""Seeded random-weight LLaVA checkpoints, built offline, in the llava-hf directory format.

``build_synthetic_checkpoint`` writes what a real ``llava-hf`` checkpoint holds: ``config.json``
and ``model.safetensors`` (a ``LlavaForConditionalGeneration`` with seeded random weights), a
real BPE tokenizer trained here on a generated English corpus, and a ``LlavaProcessor`` (CLIP
image processor + chat template in the LLaVA-1.5 format). Everything downstream loads it the
way it loads a downloaded checkpoint (``transprune.checkpoints.load_llava``).

Tokenizer: byte-level BPE (GPT-2 style) rather than Metaspace. Byte-level needs no ``<unk>`` and
no byte-fallback tokens: any prompt a user types encodes and decodes back exactly, and the
torch-free runtime needs nothing but ``tokenizers.Tokenizer.from_file``. Its 256 base symbols
fit easily in the tiny preset's 1024-entry vocabulary.

Weights: the language model's ``initializer_range`` is raised from the usual 0.02 (see
``TEXT_INIT_SCALE``) so that the random model is numerically well separated: greedy decoding
rarely meets a near-tie between the top two logits, attention is neither uniform nor one-hot,
and every image token ends up with its own hidden state. Parity tests between implementations rank tokens by scores computed from these
states, and near-ties would make them flaky.

Builds are deterministic: the same preset gives byte-identical files on every run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import TransPruneError
from .presets import ModelPreset, model_preset

__all__ = [
    "BUILDER_VERSION",
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "build_synthetic_checkpoint",
    "build_tokenizer",
    "checkpoint_fingerprint",
    "default_cache_dir",
    "ensure_synthetic_checkpoint",
    "quiet_progress_bars",
    "text_initializer_range",
    "training_corpus",
]

# Bump when anything below changes what a build writes; cached builds then rebuild.
BUILDER_VERSION = 1

# Ids 0..4, in this order.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
UNK, BOS, EOS, PAD, IMAGE = SPECIAL_TOKENS

# Weight init. The language model and the projector draw every Linear/Embedding weight from
# N(0, TEXT_INIT_SCALE / sqrt(hidden_size)): 0.15 for tiny (d=64), 0.0375 for bench (d=1024), so
# both sit in the same regime (logits and attention scores of O(1) spread). Measured on tiny
# (3 sample images x 3 prompts, 16 greedy steps, seeds 1234, 1, 2, 3):
#   std 0.02 (HF default): top-1/top-2 logit margin median 0.03; instruction->image attention
#              almost uniform (coefficient of variation 0.008): rankings would rest on rounding.
#   std 0.10:  margin median 0.23, 3% of steps < 1e-2; attention CV 0.21.
#   std 0.15:  margin median 0.23-0.29, 5th percentile 0.035, 1-2% of steps < 1e-2; attention CV
#              0.49, max weight ~0.19 (spread, not one-hot); the two closest image tokens at
#              layers 7/9/12 differ by >= 3% of their norm.
#   std >= 0.2: attention turns one-hot (max weight 0.97..1.0); scores collapse onto few tokens.
# (A fixed 0.15 on bench makes every head one-hot; 0.0375 gives CV ~0.3, max weight ~0.19.)
# VISION_INIT_RANGE (CLIP patch and position embeddings) has no measurable effect, since CLIP's
# pre-layernorm removes their common scale, so it stays at CLIP's 0.02.
TEXT_INIT_SCALE = 1.2
VISION_INIT_RANGE = 0.02


def text_initializer_range(hidden_size: int) -> float:
    """The init std of the language model and projector weights for a given width."""
    return TEXT_INIT_SCALE / math.sqrt(hidden_size)

# LLaVA-1.5 conversation format as llava-hf renders it:
#   "USER: <image>\n{text} ASSISTANT:"  and assistant turns as " {text}</s>".
# A system message is written first, followed by a space. Content is a list of
# {"type": "image"} / {"type": "text", "text": ...} parts (images first), or a plain string.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}"
    "{%- set parts = message['content'] -%}"
    "{%- endif -%}"
    "{%- set text = parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ text + ' ' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ 'USER: ' }}"
    "{%- for part in parts if part['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{{ text + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT:' }}{%- generation -%}{{ ' ' + text + '</s>' }}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

# ~300 common English words, plus the words of the chat format and of picture questions.
_WORDS = """
the of and to a in is it you that he was for on are with as his they be at one have this from
or had by hot word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her long
make thing see him two has look more day could go come did number sound no most people my over
know water than call first who may down side been now find any new work part take get place made
live where after back little only round man year came show every good me give our under name very
through just form sentence great think say help low line differ turn cause much mean before move
right boy old too same tell does set three want air well also play small end put home read hand
port large spell add even land here must big high such follow act why ask men change went light
kind off need house picture try us again animal point mother world near build self earth father
head stand own page should country found answer school grow study still learn plant cover food sun
four between state keep eye never last let thought city tree cross farm hard start might story saw
far sea draw left late run while press close night real life few north open seem together next
white children begin got walk example ease paper group always music those both mark often letter
until mile river car feet care second book carry took science eat room friend began idea fish
mountain stop once base hear horse cut sure watch color face wood main enough plain girl usual
young ready above ever red list though feel talk bird soon body dog family direct pose leave song
measure door product black short numeral class wind question happen complete ship area half rock
order fire south problem piece told knew pass since top whole king space heard best hour better
true during hundred five remember step early hold west ground interest reach fast verb sing listen
six table travel less morning ten simple several vowel toward war lay against pattern slow center
love person money serve appear road map rain rule govern pull cold notice voice unit power town
fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct
able pound done beauty drive stood contain front teach week final gave green oh quick develop
ocean warm free minute strong special mind behind clear tail produce fact street inch multiply
nothing course stay wheel full force blue object decide surface deep moon island foot system busy
test record boat common gold possible plane stead dry wonder laugh thousand ago ran check game
shape equate miss brought heat snow tire bring yes distant fill east paint language among
image photo sky hill window roof path describe shown color colors detail briefly yellow brown
USER ASSISTANT User Assistant What Where How Is Are Describe The A There It This
""".split()
_PUNCT = (".", ".", ".", "?", "!", ",")


class _SplitMix64:
    """A tiny PRNG whose stream never changes across Python or numpy versions."""

    def __init__(self, seed: int):
        self.state = seed & 0xFFFFFFFFFFFFFFFF

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n

    def zipf_index(self, n: int) -> int:
        """An index in [0, n) that favours small indices (common words come first in _WORDS)."""
        return min(self.below(n), self.below(n), self.below(n))


def training_corpus(*, seed: int = 0, n_sentences: int = 4000) -> list[str]:
    """Deterministic training text: random sentences, numbers, and chat-formatted turns."""
    rng = _SplitMix64(seed)
    words = _WORDS
    lines = []
    for i in range(n_sentences):
        n = 3 + rng.below(10)
        sent = [words[rng.zipf_index(len(words))] for _ in range(n)]
        if rng.below(6) == 0:
            sent.insert(rng.below(n), str(rng.below(10 ** (1 + rng.below(4)))))
        text = " ".join(sent)
        text = text[0].upper() + text[1:] + _PUNCT[rng.below(len(_PUNCT))]
        if i % 5 == 0:
            question = " ".join(words[rng.zipf_index(len(words))] for _ in range(4))
            text = f"USER: \nWhat is the {question}? ASSISTANT: {text}"
        lines.append(text)
    lines.append("0 1 2 3 4 5 6 7 8 9 10 100 1000 ( ) [ ] { } \" ' : ; - + * / = % & # @ $ _ \n\t")
    return lines


def build_tokenizer(vocab_size: int, *, seed: int = 0):
    """A byte-level BPE ``tokenizers.Tokenizer`` (at most ``vocab_size`` entries) that prepends BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(training_corpus(seed=seed), trainer=trainer)
    if tok.token_to_id(IMAGE) != SPECIAL_TOKENS.index(IMAGE):
        raise AssertionError("special tokens did not get ids 0..4")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return tok


def _hf_tokenizer(tok, preset: ModelPreset):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=preset.text.max_position_embeddings,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def _llava_config(preset: ModelPreset, *, text_init: float, vision_init: float):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    t, v = preset.text, preset.vision
    ids = {name: SPECIAL_TOKENS.index(name) for name in SPECIAL_TOKENS}
    text = LlamaConfig(
        vocab_size=t.vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        max_position_embeddings=t.max_position_embeddings,
        rms_norm_eps=t.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta},
        initializer_range=text_init,
        tie_word_embeddings=False,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
    )
    vision = CLIPVisionConfig(
        image_size=v.image_size,
        patch_size=v.patch_size,
        hidden_size=v.hidden_size,
        num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads,
        intermediate_size=v.intermediate_size,
        projection_dim=v.hidden_size,
        initializer_range=vision_init,
    )
    common = dict(vision_config=vision, text_config=text, image_seq_length=v.n_patches, projector_hidden_act="gelu",
                  vision_feature_select_strategy="default", vision_feature_layer=v.feature_layer,
                  tie_word_embeddings=False)
    if preset.family.anyres:
        from transformers import LlavaNextConfig

        from .presets import NEXT_GRID_PINPOINTS

        return LlavaNextConfig(**common, image_token_index=ids[IMAGE],
                               image_grid_pinpoints=[list(p) for p in NEXT_GRID_PINPOINTS])
    return LlavaConfig(**common, image_token_id=ids[IMAGE], bos_token_id=ids[BOS], eos_token_id=ids[EOS],
                       pad_token_id=ids[PAD])


def _processor(tokenizer, preset: ModelPreset):
    """The checkpoint's processor: CLIP's image processor for LLaVA-1.5, the anyres one (PIL
    backend, on LLaVA-NeXT-7B's pinpoints) for LLaVA-NeXT; the same tokenizer and chat template."""
    from transformers import CLIPImageProcessorPil, LlavaNextProcessor, LlavaProcessor
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from .presets import NEXT_GRID_PINPOINTS

    size = preset.vision.image_size
    image_settings = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                          resample=PILImageResampling.BICUBIC, do_center_crop=True, do_normalize=True,
                          image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD))
    if preset.family.anyres:
        image_processor = LlavaNextImageProcessorPil(
            image_grid_pinpoints=[list(p) for p in NEXT_GRID_PINPOINTS], do_pad=True, **image_settings)
        processor_class = LlavaNextProcessor
    else:
        image_processor, processor_class = CLIPImageProcessorPil(**image_settings), LlavaProcessor
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=preset.vision.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE,
        chat_template=CHAT_TEMPLATE,
    )


def _random_model(preset: ModelPreset, *, text_init: float, vision_init: float):
    """The seeded random-weight model (fp32, eval mode)."""
    import torch
    config = _llava_config(preset, text_init=text_init, vision_init=vision_init)
    torch.manual_seed(preset.seed)
    model = preset.family.transformers_class("model")(config).to(torch.float32)
    return model.eval()


@contextlib.contextmanager
def quiet_progress_bars():
    """Silence transformers' progress bars (e.g. "Writing model shards") for a block."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _write_checkpoint(preset: ModelPreset, out: Path, *, text_init: float, vision_init: float) -> None:
    """Write every file of the checkpoint into the (empty) directory ``out``."""
    tok = build_tokenizer(preset.text.vocab_size, seed=preset.seed)
    if tok.get_vocab_size() > preset.text.vocab_size:
        raise AssertionError("tokenizer vocabulary larger than the model's")
    model = _random_model(preset, text_init=text_init, vision_init=vision_init)
    with quiet_progress_bars():
        model.save_pretrained(out, safe_serialization=True)
    processor = _processor(_hf_tokenizer(tok, preset), preset)
    processor.save_pretrained(out)
    # Ordinary cache permissions (mkdtemp makes 0700, the safetensors writer 0600).
    os.chmod(out, 0o755)
    for f in out.iterdir():
        os.chmod(f, 0o644)


def build_synthetic_checkpoint(preset: ModelPreset, dest: Path) -> Path:
    """Write the complete checkpoint directory of a synthetic preset at ``dest`` and return it.

    The files are written into a temporary sibling directory that is renamed to ``dest`` only
    when complete, so a crash leaves nothing half-written at ``dest``. Raises
    ``FileExistsError`` if ``dest`` exists (and is not an empty directory) by then.
    """
    if not preset.synthetic:
        raise TransPruneError(
            f"preset {preset.name!r} is not synthetic; its weights come from {preset.hub_id}"
        )
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.building-", dir=dest.parent))
    try:
        _write_checkpoint(
            preset, tmp, text_init=text_initializer_range(preset.text.hidden_size),
            vision_init=VISION_INIT_RANGE,
        )
        try:
            os.rename(tmp, dest)  # atomic; fails if dest is a non-empty directory
        except OSError as exc:
            if dest.exists():
                raise FileExistsError(f"{dest} already exists") from exc
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def checkpoint_fingerprint(preset: ModelPreset) -> str:
    """A short hash of the preset and the builder version: a change to either rebuilds."""
    payload = json.dumps({"preset": preset.to_dict(), "builder": BUILDER_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    """``$TRANSPRUNE_CACHE`` if set, else ``~/.cache/transprune``."""
    env = os.environ.get("TRANSPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "transprune"


def _is_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file() and (
        path / "tokenizer.json"
    ).is_file()


def _remove_stale_builds(dest: Path, max_age_s: float = 3600.0) -> None:
    """Delete temporary build directories of ``dest`` left behind by killed builds."""
    now = time.time()
    for tmp in dest.parent.glob(f".{dest.name}.building-*"):
        try:
            if now - tmp.stat().st_mtime > max_age_s:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def ensure_synthetic_checkpoint(name: str, *, cache_dir: Path | None = None) -> Path:
    """The directory of synthetic preset ``name``, built on first use under the cache.

    Location: ``<cache>/models/<name>-<fingerprint>``. Safe when several processes race: each
    builds into its own temporary directory and the first rename wins; the others discard theirs.
    """
    preset = model_preset(name)
    if not preset.synthetic:
        raise TransPruneError(f"preset {name!r} is not synthetic; it is loaded from {preset.hub_id}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = root / "models" / f"{name}-{checkpoint_fingerprint(preset)}"
    if _is_complete(dest):
        return dest
    _remove_stale_builds(dest)
    if dest.exists():  # not written by us (our renames are atomic): clear it and rebuild
        shutil.rmtree(dest, ignore_errors=True)
    try:
        return build_synthetic_checkpoint(preset, dest)
    except FileExistsError:
        if _is_complete(dest):  # another process won the race
            return dest
        raise
