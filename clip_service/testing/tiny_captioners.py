"""Tiny random-weight BLIP-2, GIT and Florence-2 captioners in their real on-disk formats.

Like :mod:`clip_service.testing.tiny_models` (which makes the BLIP one): written offline with
``save_pretrained`` in about a second each, loaded through the calls users' checkpoints go
through (``AutoProcessor.from_pretrained``, ``Blip2ForConditionalGeneration.from_pretrained``,
``AutoModelForCausalLM.from_pretrained``, ``Florence2ForConditionalGeneration.from_pretrained``).
Processors and tokenizers are the classes of the real repos (Salesforce/blip2-opt-2.7b,
Salesforce/blip2-flan-t5-xl, microsoft/git-large-coco, florence-community/Florence-2-base),
with vocabularies built here over a few hundred English words, so random captions decode to
words; image sizes are the real ones, everything else is tiny.

    python -m clip_service.testing.tiny_captioners OUT_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
from transformers import (
    BartTokenizer,
    BertTokenizer,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessor,
    CLIPImageProcessor,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    GitConfig,
    GitForCausalLM,
    GitProcessor,
    GPT2Tokenizer,
    T5Tokenizer,
)

from clip_service.testing.tiny_models import (
    _BLIP_WORDS,
    _OPENAI_MEAN,
    _OPENAI_STD,
    _generate,
    _seeded,
    _transformer_dims,
)

__all__ = ["make_all_captioners", "make_blip2_opt", "make_blip2_t5", "make_florence2", "make_git"]

_WORDS = list(dict.fromkeys(_BLIP_WORDS.split()))
_WIDTH = 32  # language models' width; vision towers use tiny_models' 64
_NUM_QUERY_TOKENS = 4  # BLIP-2's Q-Former queries (32 in the real ones)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Florence-2 sees 768 x 768 images. The real DaViT tower (strides 4, 2, 2, 2) makes a 24 x 24
# grid of them, plus one pooled token; the tiny one's first stride is 16 (a sixteenth of the
# work on CPU), so 6 x 6 + 1.
_FLORENCE_SIZE, _FLORENCE_IMAGE_TOKENS = 768, 6 * 6 + 1


def make_blip2_opt(out_dir: str | Path, *, seed: int = 0) -> Path:
    """BLIP-2 with an OPT decoder, laid out like Salesforce/blip2-opt-2.7b (``blip2-2.7b``)."""

    def build(out: Path) -> None:
        vocab, merges = _byte_bpe(["</s>", "<pad>", "<unk>"])
        tokenizer = GPT2Tokenizer(
            vocab=vocab,
            merges=merges,
            bos_token="</s>",  # OPT starts and ends with </s>, as facebook/opt-* do
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
        )
        processor = _blip2_processor(tokenizer)
        processor.save_pretrained(out)
        text_config = {
            "model_type": "opt",
            "hidden_size": _WIDTH,
            "word_embed_proj_dim": _WIDTH,
            "ffn_dim": 4 * _WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 512,
            "bos_token_id": tokenizer.bos_token_id,
            # The BLIP-2 OPT checkpoints stop captions at a newline ("\n", byte-level "Ċ").
            "eos_token_id": tokenizer.convert_tokens_to_ids("\u010a"),
            "pad_token_id": tokenizer.pad_token_id,
            # Untied (OPT ties them): a tiny random decoder with tied embeddings predicts its
            # input token again, so every caption would be an immediate </s>.
            "tie_word_embeddings": False,
        }
        _blip2_model(seed, tokenizer, text_config).save_pretrained(out)

    return _generate(out_dir, "blip2-opt", seed, build)


def make_blip2_t5(out_dir: str | Path, *, seed: int = 0) -> Path:
    """BLIP-2 with a T5 encoder-decoder, laid out like Salesforce/blip2-flan-t5-xl."""

    def build(out: Path) -> None:
        pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
        pieces += [(f"\u2581{word}", -float(i)) for i, word in enumerate(_WORDS, 1)]
        pieces += [(char, -1000.0) for char in sorted(set("".join(_WORDS)))]
        tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
        processor = _blip2_processor(tokenizer)
        processor.save_pretrained(out)
        text_config = {
            "model_type": "t5",
            "d_model": _WIDTH,
            "d_kv": 16,
            "d_ff": 4 * _WIDTH,
            "num_layers": 2,
            "num_decoder_layers": 2,
            "num_heads": 2,
            "feed_forward_proj": "gated-gelu",  # as flan-t5
            "tie_word_embeddings": False,
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "decoder_start_token_id": tokenizer.pad_token_id,
            # BLIP-2's generate() without a prompt (as clip-interrogator calls it) ends the
            # encoder input with the language model's bos token, which T5 configs lack; the
            # BLIP-2 T5 checkpoints were converted with bos_token_id=1 (</s>), as here.
            "bos_token_id": tokenizer.eos_token_id,
        }
        _blip2_model(seed, tokenizer, text_config).save_pretrained(out)

    return _generate(out_dir, "blip2-t5", seed, build)


def make_git(out_dir: str | Path, *, seed: int = 0) -> Path:
    """GIT laid out like microsoft/git-large-coco (``git-large-coco``): ``GitForCausalLM``,
    ``GitProcessor`` with a BERT WordPiece tokenizer and CLIP's 224 px image processor."""

    def build(out: Path) -> None:
        vocab = {
            t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS])
        }
        tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512)
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": 224},
            crop_size={"height": 224, "width": 224},
            image_mean=list(_OPENAI_MEAN),
            image_std=list(_OPENAI_STD),
        )
        GitProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
        (out / "vocab.txt").write_text("".join(f"{t}\n" for t in vocab), encoding="utf-8")
        config = GitConfig(
            vision_config={
                **_transformer_dims(64),
                "image_size": 224,
                "patch_size": 32,
                "initializer_range": 0.02,
            },
            **_transformer_dims(_WIDTH),
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
            # GIT starts captions with [CLS] and ends them with [SEP], as git-large-coco does.
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        _seeded(seed, GitForCausalLM, config).save_pretrained(out)

    return _generate(out_dir, "git", seed, build)


def make_florence2(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Florence-2 laid out like florence-community/Florence-2-base (transformers' native
    format): ``Florence2ForConditionalGeneration`` (DaViT tower + BART), ``Florence2Processor``
    with a byte-level BPE ``BartTokenizer`` holding the ``<image>`` token and a 768 px
    ``CLIPImageProcessor`` (ImageNet mean and std, no crop)."""

    def build(out: Path) -> None:
        vocab, merges = _byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        tokenizer = BartTokenizer(
            vocab=vocab, merges=merges, extra_special_tokens={"image_token": "<image>"}
        )
        image_processor = CLIPImageProcessor(
            size={"height": _FLORENCE_SIZE, "width": _FLORENCE_SIZE},
            crop_size={"height": _FLORENCE_SIZE, "width": _FLORENCE_SIZE},
            do_center_crop=False,
            image_mean=list(_IMAGENET_MEAN),
            image_std=list(_IMAGENET_STD),
            image_seq_length=_FLORENCE_IMAGE_TOKENS,
        )
        processor = Florence2Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            # The caption tasks' parse rule (the real config also has the detection ones').
            post_processor_config={"pure_text": {}},
        )
        processor.save_pretrained(out)
        config = Florence2Config(
            vision_config={
                "depths": [1, 1, 1, 1],
                "patch_size": [16, 3, 3, 3],
                "patch_stride": [16, 2, 2, 2],
                "patch_padding": [0, 1, 1, 1],
                "window_size": 6,
                "embed_dim": [16, 16, 32, 32],
                "num_heads": [1, 1, 2, 2],
                "num_groups": [1, 1, 2, 2],
                "projection_dim": _WIDTH,
                "drop_path_rate": 0.0,
            },
            text_config={
                "model_type": "bart",
                "d_model": _WIDTH,
                "encoder_layers": 1,
                "decoder_layers": 1,
                "encoder_attention_heads": 2,
                "decoder_attention_heads": 2,
                "encoder_ffn_dim": 4 * _WIDTH,
                "decoder_ffn_dim": 4 * _WIDTH,
                "vocab_size": len(tokenizer),
                "max_position_embeddings": 1024,
                "bos_token_id": tokenizer.bos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "decoder_start_token_id": tokenizer.eos_token_id,  # BART's
                # BART's 0.02 leaves a tiny decoder deaf to its encoder: one caption for all.
                "init_std": 0.3,
            },
            image_token_id=tokenizer.image_token_id,
            # Untied (the real ones tie them): else the tiny decoder repeats its input token.
            tie_word_embeddings=False,
        )
        _seeded(seed, Florence2ForConditionalGeneration, config).save_pretrained(out)

    return _generate(out_dir, "florence2", seed, build)


def make_all_captioners(out_dir: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """All four, as the subdirectories ``blip2-opt``, ``blip2-t5``, ``git`` and ``florence2``."""
    out = Path(out_dir)
    return {
        "blip2-opt": make_blip2_opt(out / "blip2-opt", seed=seed),
        "blip2-t5": make_blip2_t5(out / "blip2-t5", seed=seed),
        "git": make_git(out / "git", seed=seed),
        "florence2": make_florence2(out / "florence2", seed=seed),
    }


def _byte_bpe(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE (GPT-2 / BART style) vocabulary and merges learnt over the word list,
    specials first; learnt by the ``tokenizers`` trainer, which is deterministic."""
    trainer = ByteLevelBPETokenizer()
    text = " ".join(_WORDS)
    trainer.train_from_iterator(
        [text], vocab_size=2000, min_frequency=1, special_tokens=specials, show_progress=False
    )
    model = json.loads(trainer.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def _blip2_processor(tokenizer: object) -> Blip2Processor:
    """BLIP-2's processor: BLIP's 224 px image processor, ``<image>`` added to the tokenizer."""
    image_processor = BlipImageProcessor(
        size={"height": 224, "width": 224},
        image_mean=list(_OPENAI_MEAN),
        image_std=list(_OPENAI_STD),
    )
    return Blip2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=_NUM_QUERY_TOKENS
    )


def _blip2_model(seed: int, tokenizer: object, text_config: dict) -> Blip2ForConditionalGeneration:
    """A BLIP-2 model around ``text_config``, image tokens at the processor's ``<image>`` id."""
    config = Blip2Config(
        vision_config={
            **_transformer_dims(64),
            "image_size": 224,
            "patch_size": 32,
            "initializer_range": 0.02,
        },
        qformer_config={
            **_transformer_dims(_WIDTH),
            "encoder_hidden_size": 64,
            "vocab_size": 64,  # the Q-Former's text input, unused for captions
        },
        text_config=text_config,
        num_query_tokens=_NUM_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return _seeded(seed, Blip2ForConditionalGeneration, config)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m clip_service.testing.tiny_captioners",
        description="Write tiny random-weight BLIP-2, GIT and Florence-2 captioners for tests.",
    )
    parser.add_argument("out_dir", type=Path, help="directory to write the models into")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    args = parser.parse_args(argv)
    for name, path in make_all_captioners(args.out_dir, seed=args.seed).items():
        print(f"{name:10s} CAPTION_MODEL={path.resolve()}")


if __name__ == "__main__":
    main()
