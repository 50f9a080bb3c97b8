"""Gemma 2 and Gemma 3 text models as GgufExport writes them: llama.cpp's gemma2 and gemma3 architectures.

llama.cpp computes a Gemma model from a few keys and some fixed choices of its own (`GEMMA`, one row per
architecture), so a config is written only where those choices are transformers' too, and refused otherwise, by name:
- every `period`-th layer attends to the whole context and the others to a sliding window (llama.cpp's default
  pattern: Gemma 2 alternates, Gemma 3 has one full layer in six); a config whose `layer_types` say otherwise gets
  its pattern written as `attention.sliding_window_pattern`;
- Gemma 3's sliding layers have a RoPE base of their own (10000 unless `rope.freq_base_swa` says otherwise), and
  RoPE scaling only on its full-attention layers, only linear (Gemma 3 4B and larger); Gemma 2's layers share one
  base and no scaling;
- the attention scale is 1/sqrt(head_dim), and for the 27B models (46 layers in Gemma 2, 62 in Gemma 3)
  1/sqrt(hidden / heads), where transformers takes 1/sqrt(query_pre_attn_scalar); tanh-approximated GELU; causal;
- Gemma 2 soft-caps the attention and final logits (both written), Gemma 3 at most the final ones; Gemma 2's head
  is its embedding in llama.cpp, whatever the file holds.
Each norm's weight is written plus one (`gguf_export._shift_norm`), and the embedding is scaled by sqrt(hidden) in
llama.cpp's graph as in transformers'. The tokenizer is the SentencePiece-style one (`gguf_hf._tokenizer`).
"""

from __future__ import annotations

from dataclasses import dataclass

LLAMA_CPP_SWA_BASE = 10000.0  # llama.cpp's default RoPE base of Gemma 3's sliding layers
GELU_TANH = ("gelu_pytorch_tanh",)  # transformers' names of the GELU llama.cpp computes
_SHARED_DEFAULTS = {"head_dim": 256, "query_pre_attn_scalar": 256, "hidden_activation": "gelu_pytorch_tanh",
                    "num_attention_heads": 8, "num_key_value_heads": 4, "hidden_size": 2304,
                    "intermediate_size": 9216, "num_hidden_layers": 26, "rms_norm_eps": 1e-6, "sliding_window": 4096}


@dataclass(frozen=True)
class GemmaArch:
    """What llama.cpp fixes for one Gemma architecture, and transformers' config defaults for the keys read here (a
    config.json that leaves one out is read as transformers reads it: the config check reads the file, the export
    the loaded config)."""

    period: int  # llama.cpp's default pattern: layers period - 1, 2 * period - 1, ... attend to the whole context
    big_layers: int  # the layer count llama.cpp takes for the 27B, scaled by 1/sqrt(hidden / heads)
    defaults: dict
    attn_softcap: bool  # llama.cpp soft-caps attention logits (Gemma 2 always, Gemma 3 never)
    own_swa_rope: bool  # the sliding layers have a RoPE base of their own
    tied_only: bool  # llama.cpp reads the head as the embedding, an output tensor in the file or not
    always_swa: bool  # llama.cpp slides its pattern's layers even with no window key (over 4096 tokens)


GEMMA = {
    "gemma2": GemmaArch(2, 46, {**_SHARED_DEFAULTS, "max_position_embeddings": 8192, "attn_logit_softcapping": 50.0,
                                "final_logit_softcapping": 30.0}, True, False, True, True),
    "gemma3": GemmaArch(6, 62, {**_SHARED_DEFAULTS, "max_position_embeddings": 131072}, False, True, False, False),
}


def _filled(config: dict, arch: GemmaArch) -> dict:
    """`config` with transformers' defaults where it has no value (null stays for a sliding window or a soft-cap,
    where it means none)."""
    filled = {**arch.defaults, **config}
    kept = ("sliding_window", "attn_logit_softcapping", "final_logit_softcapping")
    return {k: arch.defaults[k] if v is None and k in arch.defaults and k not in kept else v for k, v in filled.items()}


def _rope(config: dict, arch: GemmaArch) -> tuple[dict, dict]:
    """(full-attention RoPE, sliding RoPE) parameters, from transformers 5's `rope_parameters` (by layer type for
    Gemma 3) or an older config's rope_theta, rope_scaling and rope_local_base_freq."""
    nested = config.get("rope_parameters") or {}
    if "full_attention" in nested or "sliding_attention" in nested:
        return dict(nested.get("full_attention") or {}), dict(nested.get("sliding_attention") or {})
    scaling = dict(config.get("rope_scaling") or nested or {})
    full = {**scaling, "rope_type": scaling.get("rope_type") or scaling.get("type") or "default",
            "rope_theta": nested.get("rope_theta", config.get("rope_theta", 1_000_000.0 if arch.own_swa_rope
                                                                  else 10000.0))}
    if not arch.own_swa_rope:
        return full, full
    return full, {"rope_type": "default", "rope_theta": config.get("rope_local_base_freq", LLAMA_CPP_SWA_BASE)}


def _layer_types(config: dict, arch: GemmaArch) -> list[str]:
    """Each layer's attention ("sliding_attention" or "full_attention"), as the config says or its pattern implies."""
    given = config.get("layer_types")
    if given:
        return list(given)
    period = int(config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or arch.period)
    return ["full_attention" if (i + 1) % period == 0 else "sliding_attention"
            for i in range(int(config["num_hidden_layers"]))]


def gemma_unwritten(config: dict, name: str) -> str | None:
    """Why llama.cpp's architecture `name` would compute this config (config.json's keys, or a loaded config's
    to_dict()) otherwise than transformers; None where it would not."""
    arch = GEMMA[name]
    config = _filled(config, arch)
    heads, head_dim = int(config["num_attention_heads"]), int(config["head_dim"])
    activation = config["hidden_activation"]
    if activation not in GELU_TANH:
        return f"its hidden_activation is {activation!r}, and llama.cpp's {name} computes gelu_pytorch_tanh"
    if arch.attn_softcap and config.get("attn_logit_softcapping") is None:
        return f"it does not soft-cap attention logits (attn_logit_softcapping), which llama.cpp's {name} always does"
    if not arch.attn_softcap and config.get("attn_logit_softcapping") is not None:
        return f"it soft-caps attention logits (attn_logit_softcapping), which llama.cpp's {name} does not"
    if name == "gemma2" and config.get("final_logit_softcapping") is None:
        return "it does not soft-cap its final logits (final_logit_softcapping), which llama.cpp's gemma2 always does"
    if arch.tied_only and config.get("tie_word_embeddings") is False:
        return f"its head is not its embedding (tie_word_embeddings false), and llama.cpp's {name} reads the embedding"
    if config.get("use_bidirectional_attention"):
        return f"its attention is bidirectional (use_bidirectional_attention), and llama.cpp's {name} is causal"
    if config.get("attention_bias"):
        return f"its attention projections have biases (attention_bias), and llama.cpp's {name} has none on the output"
    if "sliding_attention" in _layer_types(config, arch) and not config.get("sliding_window"):
        return f"it has sliding-attention layers and no sliding_window, which llama.cpp's {name} would read otherwise"
    scale = int(config["hidden_size"]) // heads if int(config["num_hidden_layers"]) == arch.big_layers else head_dim
    if float(config["query_pre_attn_scalar"]) != scale:
        return (f"its query_pre_attn_scalar is {config['query_pre_attn_scalar']}, and llama.cpp scales this model's "
                f"attention by 1/sqrt({scale})")
    full, sliding = _rope(config, arch)
    if arch.own_swa_rope and sliding.get("rope_type", "default") != "default":
        return f"its sliding layers' RoPE is {sliding['rope_type']!r}, and llama.cpp scales none there"
    allowed = ("default", "linear") if arch.own_swa_rope else ("default",)
    if full.get("rope_type", "default") not in allowed:
        return (f"its RoPE scaling is {full['rope_type']!r}, and GgufExport writes "
                f"{'linear scaling on the full layers' if arch.own_swa_rope else 'none'} for {name}")
    return None


def gemma_keys(config: dict, name: str) -> dict:
    """The `name`.* metadata for a config (config.json's keys, or a loaded config's to_dict())."""
    arch = GEMMA[name]
    config = _filled(config, arch)
    full, sliding = _rope(config, arch)
    keys = {"context_length": int(config["max_position_embeddings"]), "embedding_length": int(config["hidden_size"]),
            "feed_forward_length": int(config["intermediate_size"]), "block_count": int(config["num_hidden_layers"]),
            "attention.head_count": int(config["num_attention_heads"]),
            "attention.head_count_kv": int(config["num_key_value_heads"]),
            "attention.layer_norm_rms_epsilon": float(config["rms_norm_eps"]),
            "attention.key_length": int(config["head_dim"]), "attention.value_length": int(config["head_dim"]),
            "rope.freq_base": float(full["rope_theta"])}
    types = _layer_types(config, arch)
    # Gemma 3 without a window key has no sliding layer in llama.cpp; Gemma 2 always has its pattern
    if "sliding_attention" in types or arch.always_swa:
        if "sliding_attention" in types:
            keys["attention.sliding_window"] = int(config["sliding_window"])
        pattern = [t == "sliding_attention" for t in types]
        if pattern != [(i + 1) % arch.period != 0 for i in range(len(types))]:
            keys["attention.sliding_window_pattern"] = pattern
        if arch.own_swa_rope and float(sliding.get("rope_theta", LLAMA_CPP_SWA_BASE)) != LLAMA_CPP_SWA_BASE:
            keys["rope.freq_base_swa"] = float(sliding["rope_theta"])
    if full.get("rope_type") == "linear":
        keys["rope.scaling.type"], keys["rope.scaling.factor"] = "linear", float(full["factor"])
    if config.get("attn_logit_softcapping") is not None and arch.attn_softcap:
        keys["attn_logit_softcapping"] = float(config["attn_logit_softcapping"])
    if config.get("final_logit_softcapping"):
        keys["final_logit_softcapping"] = float(config["final_logit_softcapping"])
    return {f"{name}.{k}": v for k, v in keys.items()}
