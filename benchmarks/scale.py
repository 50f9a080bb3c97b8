"""Phi-3-mini's real shapes on this machine: peak memory and time of the int4 export, plain and bounded.

    python benchmarks/scale.py                 # 2, 4 and 8 layers, both exporters, and the projection to 32
    python benchmarks/scale.py --full          # also the real 32-layer bounded export (7.6 GB checkpoint on disk)

Models are random Phi-3-mini-shaped bf16 checkpoints (vocab 32064, hidden 3072, MLP 8192, 32 heads)
with fewer layers, made on the meta device and initialised in place in bf16, so no float32 copy of
the weights is ever held. Each measurement runs in its own process; its peak is that process's
peak resident set (ru_maxrss), which counts the checkpoint pages it maps, as a user's machine would.
Numbers are from one run on one machine: compare the two exporters side by side, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHI3_MINI = dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_attention_heads=32,
                 num_key_value_heads=32, max_position_embeddings=4096, original_max_position_embeddings=4096,
                 rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=32000, pad_token_id=32000,
                 tie_word_embeddings=False, sliding_window=2047)
FULL_LAYERS = 32


def make_checkpoint(layers: int, folder: Path) -> Path:
    """A random bf16 Phi-3-mini-shaped model with `layers` layers (skipped if the folder is complete)."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    from modelpress.models import load_tokenizer
    from modelpress.tiny import create_tiny_model

    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    config = Phi3Config(num_hidden_layers=layers, **PHI3_MINI)
    with torch.device("meta"):
        model = Phi3ForCausalLM(config).to(torch.bfloat16)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(layers)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(str(folder), max_shard_size="2GB")
    del model
    tiny = create_tiny_model(folder.parent / "tokenizer-source")  # any Phi-3 tokenizer: the export reads its files
    load_tokenizer(tiny).save_pretrained(str(folder))
    return folder


def child_export(src: str, out: str, bounded: str) -> None:
    """One export, in this process (run by `measure`)."""
    sys.path.insert(0, str(ROOT / "src"))
    import contextlib
    import io

    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    from modelpress.passes.builder_memory import bounded_builder
    from modelpress.passes.model_builder import _quiet_quantizer_logs

    _quiet_quantizer_logs()
    stats: dict = {}
    cache = out + ".cache"
    options = parse_extra_options("m", src, out, "int4", "cpu", cache, [], search=None)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            (bounded_builder(stats) if bounded == "1" else contextlib.nullcontext()):
        create_model("m", src, out, "int4", "cpu", cache, **options)
    print(json.dumps(stats))


def measure(args: list[str]) -> tuple[float, float, str]:
    """(peak RSS in GiB, seconds, stdout) of `python scale.py --child ARGS` in its own process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{args} failed:\n{err[-3000:]}")
    return usage.ru_maxrss / 2**20, seconds, out.strip()


def folder_gib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**30


def project(points: dict[int, float], layers: int) -> float:
    """Least-squares line through (layers, value), read at `layers`."""
    xs, ys = list(points), list(points.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my + slope * (layers - mx)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--full", action="store_true", help="also export the real 32-layer model (bounded only)")
    parser.add_argument("--work", type=Path, help="where checkpoints and exports go (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="modelpress-scale-"))
    rows, peaks = [], {"plain": {}, "bounded": {}}
    for layers in args.layers + ([FULL_LAYERS] if args.full else []):
        src = make_checkpoint(layers, work / f"phi3-mini-{layers}")
        variants = ("bounded",) if layers == FULL_LAYERS else ("plain", "bounded")
        for variant in variants:
            out = work / f"int4-{layers}-{variant}"
            peak, seconds, stats = measure(["export", str(src), str(out), "1" if variant == "bounded" else "0"])
            if layers != FULL_LAYERS:
                peaks[variant][layers] = peak
            rows.append((layers, variant, folder_gib(src), peak, seconds, folder_gib(out), stats))
            print(f"  measured {layers} layers, {variant}: {peak:.2f} GiB, {seconds:.0f} s", file=sys.stderr)
    print("\nint4 export of Phi-3-mini-shaped random bf16 checkpoints (CPU, genai builder)\n")
    print("| layers | exporter | checkpoint GiB | peak RSS GiB | seconds | int4 model GiB |")
    print("|---|---|---|---|---|---|")
    for layers, variant, ckpt, peak, seconds, size, _ in rows:
        print(f"| {layers} | {variant} | {ckpt:.2f} | {peak:.2f} | {seconds:.0f} | {size:.2f} |")
    if len(args.layers) >= 2:
        print(f"\nprojected to {FULL_LAYERS} layers (least squares over {', '.join(map(str, args.layers))}): "
              + ", ".join(f"{v} {project(p, FULL_LAYERS):.1f} GiB" for v, p in peaks.items() if len(p) >= 2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_export(*sys.argv[3:])
        sys.exit(0)
    sys.exit(main())
