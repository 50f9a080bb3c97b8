"""Gemma 3 text models (model_type gemma3_text) as GgufExport writes them: llama.cpp's gemma3 architecture.

llama.cpp computes a Gemma 3 model from a few keys and some fixed choices of its own, so a config is written only
where those choices are transformers' too, and refused otherwise, by name:
- every 6th layer attends to the whole context and the others to a sliding window (llama.cpp's default pattern);
  a config whose `layer_types` say otherwise gets the pattern written as `attention.sliding_window_pattern`;
- the sliding layers' RoPE base is 10000 unless `rope.freq_base_swa` says otherwise (written where it differs);
  RoPE scaling only on the full-attention layers, and only linear (Gemma 3 4B and larger);
- the attention scale is 1/sqrt(head_dim) (the 62-layer 27B: 1/sqrt(hidden / heads)), where transformers takes
  1/sqrt(query_pre_attn_scalar); tanh-approximated GELU; no attention logit soft-capping; causal attention.
Each norm's weight is written plus one (`gguf_export._shift_norm`), and the embedding is scaled by sqrt(hidden) in
llama.cpp's graph as in transformers'. The tokenizer is the SentencePiece-style one (`gguf_hf._tokenizer`).
"""

from __future__ import annotations

LLAMA_CPP_PERIOD = 6  # llama.cpp's default: layers 5, 11, 17, ... attend to the whole context
LLAMA_CPP_SWA_BASE = 10000.0  # llama.cpp's default RoPE base of the sliding layers
GELU_TANH = ("gelu_pytorch_tanh",)  # transformers' names of the GELU llama.cpp computes
# Gemma3TextConfig's defaults for the keys read here, so that a config.json that leaves one out is read as
# transformers reads it (the config check reads the file, the export the loaded config)
DEFAULTS = {"head_dim": 256, "query_pre_attn_scalar": 256, "hidden_activation": "gelu_pytorch_tanh",
            "num_attention_heads": 8, "num_key_value_heads": 4, "hidden_size": 2304, "intermediate_size": 9216,
            "num_hidden_layers": 26, "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "sliding_window": 4096}


def _filled(config: dict) -> dict:
    """`config` with Gemma3TextConfig's defaults where it has no value (a null sliding_window stays: no window)."""
    filled = {**DEFAULTS, **config}
    return {k: DEFAULTS[k] if v is None and k in DEFAULTS and k != "sliding_window" else v for k, v in filled.items()}


def _rope(config: dict) -> tuple[dict, dict]:
    """(full-attention RoPE, sliding RoPE) parameters, from transformers 5's `rope_parameters` by layer type or an
    older config's rope_theta, rope_scaling and rope_local_base_freq."""
    nested = config.get("rope_parameters") or {}
    if "full_attention" in nested or "sliding_attention" in nested:
        return dict(nested.get("full_attention") or {}), dict(nested.get("sliding_attention") or {})
    scaling = dict(config.get("rope_scaling") or nested or {})
    full = {**scaling, "rope_type": scaling.get("rope_type") or scaling.get("type") or "default",
            "rope_theta": nested.get("rope_theta", config.get("rope_theta", 1_000_000.0))}
    return full, {"rope_type": "default", "rope_theta": config.get("rope_local_base_freq", LLAMA_CPP_SWA_BASE)}


def _layer_types(config: dict) -> list[str]:
    """Each layer's attention ("sliding_attention" or "full_attention"), as the config says or its pattern implies."""
    layers = int(config.get("num_hidden_layers") or DEFAULTS["num_hidden_layers"])
    given = config.get("layer_types")
    if given:
        return list(given)
    period = int(config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or LLAMA_CPP_PERIOD)
    return ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(layers)]


def gemma3_unwritten(config: dict) -> str | None:
    """Why llama.cpp would compute this Gemma 3 config (config.json's keys) otherwise than transformers; None
    where it would not."""
    config = _filled(config)
    heads, head_dim = int(config["num_attention_heads"]), int(config["head_dim"])
    activation = config["hidden_activation"]
    if activation not in GELU_TANH:
        return f"its hidden_activation is {activation!r}, and llama.cpp's gemma3 computes gelu_pytorch_tanh"
    if config.get("attn_logit_softcapping") is not None:
        return "it soft-caps attention logits (attn_logit_softcapping), which llama.cpp's gemma3 does not"
    if config.get("use_bidirectional_attention"):
        return "its attention is bidirectional (use_bidirectional_attention), and llama.cpp's gemma3 is causal"
    if config.get("attention_bias"):
        return "its attention projections have biases (attention_bias), and llama.cpp's gemma3 has none on the output"
    if "sliding_attention" in _layer_types(config) and not config.get("sliding_window"):
        return ("it has sliding-attention layers and no sliding_window, which llama.cpp reads as no sliding layers "
                "(with the full layers' RoPE base on all)")
    scale = int(config["hidden_size"]) // heads if int(config["num_hidden_layers"]) == 62 else head_dim
    if float(config["query_pre_attn_scalar"]) != scale:
        return (f"its query_pre_attn_scalar is {config['query_pre_attn_scalar']}, and llama.cpp scales this model's "
                f"attention by 1/sqrt({scale})")
    full, sliding = _rope(config)
    if sliding.get("rope_type", "default") != "default":
        return f"its sliding layers' RoPE is {sliding['rope_type']!r}, and llama.cpp scales none there"
    if full.get("rope_type", "default") not in ("default", "linear"):
        return (f"its full-attention layers' RoPE scaling is {full['rope_type']!r}, and GgufExport writes linear "
                "scaling for Gemma 3")
    return None


def gemma3_keys(config: dict) -> dict:
    """The gemma3.* metadata for a config (config.json's keys, or a loaded config's to_dict())."""
    config = _filled(config)
    heads, head_dim = int(config["num_attention_heads"]), int(config["head_dim"])
    full, sliding = _rope(config)
    keys = {"context_length": int(config["max_position_embeddings"]), "embedding_length": int(config["hidden_size"]),
            "feed_forward_length": int(config["intermediate_size"]), "block_count": int(config["num_hidden_layers"]),
            "attention.head_count": heads,
            "attention.head_count_kv": int(config["num_key_value_heads"]),
            "attention.layer_norm_rms_epsilon": float(config["rms_norm_eps"]),
            "attention.key_length": head_dim, "attention.value_length": head_dim,
            "rope.freq_base": float(full.get("rope_theta", 1_000_000.0))}
    types = _layer_types(config)
    if "sliding_attention" in types and config.get("sliding_window"):
        keys["attention.sliding_window"] = int(config["sliding_window"])
        default = [(i + 1) % LLAMA_CPP_PERIOD != 0 for i in range(len(types))]
        pattern = [t == "sliding_attention" for t in types]
        if pattern != default:
            keys["attention.sliding_window_pattern"] = pattern
        if float(sliding.get("rope_theta", LLAMA_CPP_SWA_BASE)) != LLAMA_CPP_SWA_BASE:
            keys["rope.freq_base_swa"] = float(sliding["rope_theta"])
    if full.get("rope_type") == "linear":
        keys["rope.scaling.type"], keys["rope.scaling.factor"] = "linear", float(full["factor"])
    if config.get("final_logit_softcapping"):
        keys["final_logit_softcapping"] = float(config["final_logit_softcapping"])
    return {f"gemma3.{k}": v for k, v in keys.items()}
