"""Tiny randomly initialised models of real classes, saved the way real ones are stored.

`curate models make-tiny DIR` writes them so that tests and offline trials load them through the very
same code path as a model from the hub (no hub is reachable here):

    DIR/vlm    a Qwen2-VL (transformers `Qwen2VLForConditionalGeneration`) with a byte-level BPE
               tokenizer trained locally, its chat template and `Qwen2VLProcessor`
    DIR/clip   an open_clip CLIP (open_clip_config.json + open_clip_pytorch_model.bin)
    DIR/vae    a diffusers AutoencoderKLWan (save_pretrained)
    DIR/t5     a transformers T5EncoderModel with a word-level tokenizer (latents.text)
    DIR/lm     a text-only Qwen2 causal LM with the same tokenizer (caption.rewrite)

Each maker is one entry of `MAKERS` (name -> function(folder, seed)); add one there (a tiny VAE, ...)
and the command writes it too. Captions made with these are marked random in `clips.caption_model`.

A job names them with the word `tiny` (`caption.model`, `caption.clip_model`, `caption.rewrite.model`,
`latents.text.model`):
`use_tiny_models` makes each on first use into the cache folder, `$CURATE_CACHE/tiny/` (default
`~/.cache/curate/tiny/`), and later runs and tests load them from there (about 2 s to make all three).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable

# Written next to the weights; stages.caption reads it to mark outputs made with random weights.
MARKER = "curate_tiny.json"

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# A few hundred words of text for the BPE merges; any text would do, the weights are random.
_CORPUS = (
    "a video of a person walking along a street with cars and trees in the background . "
    "the camera pans slowly to the left while a dog runs across a green field under a blue sky . "
    "close up of hands typing on a keyboard , soft light , shallow depth of field . "
    "a red car drives on a road at night , city lights , rain on the windshield . "
    "two people talk in a kitchen ; one of them pours coffee into a white cup . "
    "aerial shot of mountains covered with snow , clouds moving fast , sunset colours . "
    "describe this video in one sentence . describe the video in detail : subjects , actions , camera motion , lighting , setting . "
    "0 1 2 3 4 5 6 7 8 9 ! ? , . : ; ' \" ( ) - _ / "
)


def _tiny_tokenizer():
    """A byte-level BPE tokenizer trained here on _CORPUS, with Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", additional_special_tokens=SPECIAL[1:]
    )
    tok.padding_side = "left"
    return tok


def write_tiny_vlm(folder: str, seed: int = 0) -> str:
    """A Qwen2-VL of about 1 M parameters (2 text layers, 1 vision block) with its tokenizer and processor."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    os.makedirs(folder, exist_ok=True)
    tok = _tiny_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    head_dim = 16  # hidden 64 / 4 heads; mrope sections sum to head_dim / 2
    cfg = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_chans=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    del head_dim
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    # Random weights never pick <|im_end|> on purpose: let a third of the ordinary tokens end a caption too
    # (after at least 3), so a smoke run with this model ends with short captions that pass the checks.
    # The checks themselves are tested on crafted outputs.
    stops = [i for i in range(len(SPECIAL), len(tok)) if i % 3 == 0]
    model.generation_config.eos_token_id = [ids["<|im_end|>"], *stops]
    model.generation_config.min_new_tokens = 3
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(folder)
    pixels = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    _mark(folder, "Qwen2VLForConditionalGeneration", seed)
    return folder


# A CLIP of about 3.5 M parameters; the text tower keeps open_clip's own tokenizer vocabulary (49408).
TINY_CLIP = {
    "model_cfg": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


def write_tiny_lm(folder: str, seed: int = 0) -> str:
    """A text-only Qwen2 causal LM (2 layers, width 64) with the same tokenizer and a chat template, for
    `caption.rewrite.model`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    os.makedirs(folder, exist_ok=True)
    tok = _tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=ids["<|im_start|>"],
                      eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).eval()
    # Greedy decoding with random weights falls into a one-token loop: no token may repeat, special tokens
    # are never written, and a third of the ordinary ones end a text (after at least 6), so a rewrite ends
    # short (the checks themselves are tested on fakes).
    model.generation_config.eos_token_id = [ids["<|im_end|>"], *(i for i in range(len(SPECIAL), len(tok)) if i % 3 == 0)]
    model.generation_config.min_new_tokens = 6
    model.generation_config.no_repeat_ngram_size = 1
    model.generation_config.suppress_tokens = [i for t, i in ids.items() if t != "<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    _mark(folder, "Qwen2ForCausalLM", seed)
    return folder


def write_tiny_clip(folder: str, seed: int = 0) -> str:
    """An open_clip CLIP in open_clip's local folder layout (`create_model_and_transforms("local-dir:" + folder)`)."""
    import open_clip
    import torch

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump(TINY_CLIP, f, indent=2)
    torch.manual_seed(seed)
    torch.save(open_clip.CLIP(**TINY_CLIP["model_cfg"]).state_dict(), os.path.join(folder, "open_clip_pytorch_model.bin"))
    _mark(folder, "open_clip.CLIP", seed)
    return folder


def _mark(folder: str, cls: str, seed: int) -> None:
    with open(os.path.join(folder, MARKER), "w") as f:
        json.dump({"weights": "random", "class": cls, "seed": seed, "made_by": "curate models make-tiny"}, f)


def write_tiny_vae(folder: str, seed: int = 0) -> str:
    """A tiny random AutoencoderKLWan, loadable as `latents.vae: FOLDER` (marked random in `vae_id`)."""
    from stages.latents import save_tiny_vae

    return save_tiny_vae(folder, seed=seed)


def write_tiny_t5(folder: str, seed: int = 0) -> str:
    """A tiny random T5 encoder with a word-level tokenizer, loadable as `latents.text.model: FOLDER`."""
    from stages.latents import save_tiny_text_encoder

    return save_tiny_text_encoder(folder, "t5", seed=seed)


# name -> maker(folder, seed)
MAKERS: dict[str, Callable[[str, int], str]] = {
    "vlm": write_tiny_vlm,
    "clip": write_tiny_clip,
    "vae": write_tiny_vae,
    "t5": write_tiny_t5,
    "lm": write_tiny_lm,
}

TINY = "tiny"  # the job value that names a tiny model from the cache
CACHE_ENV = "CURATE_CACHE"
VERSION = 1  # bumped when a maker writes another model from the same seed (the cache folder changes with it)


def cache_root() -> str:
    return os.path.join(os.path.expanduser(os.environ.get(CACHE_ENV) or "~/.cache/curate"), "tiny")


def tiny_model(name: str, seed: int = 0) -> str:
    """The folder of tiny model `name` in the cache, made on first use (in a temporary folder, then
    renamed, so a run never loads half a model and two runs making it at once both end with one)."""
    folder = os.path.join(cache_root(), f"{name}-seed{seed}-v{VERSION}")
    if os.path.isdir(folder):
        return folder
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    MAKERS[name](tmp, seed)
    try:
        os.rename(tmp, folder)
    except OSError:  # made meanwhile by another run
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(folder):
            raise
    return folder


def use_tiny_models(cfg):
    """The job with every `tiny` model name replaced by its cache folder (made on first use)."""
    cap = cfg.caption
    if cap is not None and TINY in (cap.model, cap.clip_model):
        cap = dataclasses.replace(cap, model=tiny_model("vlm") if cap.model == TINY else cap.model,
                                  clip_model=tiny_model("clip") if cap.clip_model == TINY else cap.clip_model)
    if cap is not None and cap.rewrite is not None and cap.rewrite.model == TINY:
        cap = dataclasses.replace(cap, rewrite=dataclasses.replace(cap.rewrite, model=tiny_model("lm")))
    if cap is not cfg.caption:
        cfg = dataclasses.replace(cfg, caption=cap)
    lat = cfg.latents
    if lat is not None and lat.text is not None and lat.text.model == TINY:
        if lat.text.encoder != "t5":
            from curate.config import ConfigError

            raise ConfigError("latents.text.model: tiny is a T5 encoder; set latents.text.encoder: t5")
        text = dataclasses.replace(lat.text, model=tiny_model("t5"))
        cfg = dataclasses.replace(cfg, latents=dataclasses.replace(lat, text=text))
    return cfg


def make_tiny(root: str, seed: int = 0, only: list[str] | None = None) -> dict[str, str]:
    """Write every tiny model (or those named in `only`) under `root`; returns name -> folder."""
    unknown = sorted(set(only or ()) - set(MAKERS))
    if unknown:
        raise ValueError(f"unknown tiny model {unknown[0]!r}; known: {', '.join(MAKERS)}")
    return {name: make(os.path.join(root, name), seed) for name, make in MAKERS.items() if not only or name in only}
