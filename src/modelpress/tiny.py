"""A deterministic tiny Phi-3: the offline stand-in for Phi-3-mini in the example and the tests.

It keeps Phi-3's architecture and module names (`qkv_proj`, `o_proj`, `gate_up_proj`,
`down_proj`), so configs written for Phi-3-mini apply unchanged, at ~3M parameters instead
of 3.8B. Its weights are random (seeded): it knows no language until it is fine-tuned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from modelpress.fsutil import atomic_dir

SPECIAL_TOKENS = ("<|endoftext|>", "<s>", "</s>", "<unk>")


@dataclass(frozen=True)
class TinyShape:
    """Sizes of the tiny model; the defaults are the ones the notes measured."""

    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    vocab_size: int = 2048
    max_position_embeddings: int = 4096
    # 0.1, not Phi-3's 0.02: LoRA on a random base stalls at 0.02 (NOTES-stack, pitfall 3).
    initializer_range: float = 0.1


def default_corpus() -> str:
    """The small English text the tokenizer is trained on when no corpus is given."""
    return resources.files("modelpress.assets").joinpath("tiny_corpus.txt").read_text(encoding="utf-8")


def train_tokenizer(texts: list[str], vocab_size: int):
    """Train a byte-level BPE tokenizer offline; any text stays encodable through byte fallback."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", unk_token="<unk>",
    )


def create_tiny_model(out: Path, corpus_files: list[Path] | None = None, seed: int = 0,
                      shape: TinyShape = TinyShape()) -> Path:
    """Write a tiny Phi-3 (weights, config, tokenizer) to `out`, atomically.

    The same arguments always give the same files, byte for byte.
    """
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    texts = [p.read_text(encoding="utf-8") for p in corpus_files] if corpus_files else [default_corpus()]
    tokenizer = train_tokenizer([line for t in texts for line in t.splitlines() if line.strip()],
                                shape.vocab_size)
    config = Phi3Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        # The genai builder takes a long-RoPE path unless these two are equal (pitfall 2).
        max_position_embeddings=shape.max_position_embeddings,
        original_max_position_embeddings=shape.max_position_embeddings,
        initializer_range=shape.initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        sliding_window=None,
    )
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config).eval()
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _pin_tokenizer_class(tmp)
        (tmp / CARD_FILE).write_text(_card(shape, seed), encoding="utf-8")
    return Path(out)


def _pin_tokenizer_class(folder: Path) -> None:
    # Older transformers can read the folder only when the class is named explicitly.
    path = folder / "tokenizer_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


CARD_FILE = "MODEL_CARD.md"
CARD_TITLE = "# Tiny Phi-3 (made by `modelpress create-tiny-model`)"


def is_tiny_model(folder: Path) -> bool:
    """Whether `folder` is one create-tiny-model wrote (its model card says so), which it may replace."""
    card = Path(folder) / CARD_FILE
    return card.is_file() and card.read_text(encoding="utf-8", errors="replace").startswith(CARD_TITLE)


def _card(shape: TinyShape, seed: int) -> str:
    return (
        f"{CARD_TITLE}\n\n"
        "A randomly initialised Phi3ForCausalLM with Phi-3's module names, used as an offline\n"
        f"stand-in for Phi-3-mini. Seed {seed}; shape: {shape}.\n"
        "It knows no language until fine-tuned.\n"
    )
