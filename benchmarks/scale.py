"""Phi-3-mini's real shapes on this machine: peak memory and time of int4 export, LoRA and merge.

    python benchmarks/scale.py            # int4 export, LoRA step and merge at 2, 4 and 8 layers, before and after
    python benchmarks/scale.py --full     # and each stage's bounded variant at 32 layers (7.6 GB checkpoint on disk)

Models are random Phi-3-mini-shaped bf16 checkpoints (vocab 32064, hidden 3072, MLP 8192, 32 heads)
with fewer layers, made on the meta device and initialised in place in bf16, so no float32 copy of
the weights is ever held. Each measurement runs in its own process; its peak is that process's
peak resident set (VmHWM), which counts the checkpoint pages it maps, as a user's machine would.
Numbers are from one run on one machine: compare the two exporters side by side, not across runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def child_lora(src: str, dtype: str, checkpointing: str, steps: str = "3") -> None:
    """LoRA steps at batch 1 x 1024 tokens on `src`, set up as the LoRA pass sets it up (r 16 on the
    attention and MLP projections, AdamW); prints the mean seconds of the steps after the first."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from peft import LoraConfig, get_peft_model

    from modelpress.models import load_causal_lm

    torch.manual_seed(0)
    model = load_causal_lm(Path(src), dtype)
    if checkpointing == "1":
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM",
                                             target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]))
    model.train()  # as the Trainer does: checkpointing is active in training mode only
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trainable), "adapters must stay float32"
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(0, 32000, (1, 1024), generator=torch.Generator().manual_seed(1))
    times = []
    for _ in range(int(steps)):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    print(json.dumps({"step_seconds": sum(times[1:]) / max(len(times) - 1, 1), "loss": float(loss)}))


def child_merge(src: str, out: str, variant: str) -> None:
    """A rank-16 LoRA adapter (random B) merged into `src` by modelpress's tensor-by-tensor merge."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from safetensors.torch import save_file

    from modelpress.passes.merge_stream import merge_streamed

    config = json.loads((Path(src) / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    adapter = Path(out + ".adapter")
    adapter.mkdir(parents=True, exist_ok=True)
    shapes = {"self_attn.qkv_proj": 3 * hidden, "self_attn.o_proj": hidden}
    tensors = {}
    for i in range(layers):
        for module, rows in shapes.items():
            key = f"base_model.model.model.layers.{i}.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(16, hidden) * 0.01
            tensors[f"{key}.lora_B.weight"] = torch.randn(rows, 16) * 0.01
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 16, "lora_alpha": 32, "task_type": "CAUSAL_LM", "lora_dropout": 0.0,
        "target_modules": ["qkv_proj", "o_proj"], "base_model_name_or_path": src}))
    del tensors
    if variant == "peft":  # what MergeAdapterWeights did before: the whole model in float32
        from peft import PeftModel

        from modelpress.models import load_causal_lm

        merged = PeftModel.from_pretrained(load_causal_lm(Path(src), "float32"), str(adapter)).merge_and_unload()
        merged.save_pretrained(out)
        print(json.dumps({"merged": "peft"}))
        return
    print(json.dumps({"merged": merge_streamed(adapter, Path(src), Path(out))}))


def own_peak_gib() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss from wait4: a child started by vfork/exec
    inherits its parent's high-water mark there, so a large parent would be counted as the child's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(args: list[str]) -> tuple[float, float, str]:
    """(peak RSS in GiB, seconds, stdout) of `python scale.py --child ARGS` in its own process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1])["peak_gib"], seconds, "\n".join(lines[:-1])


def project(points: dict[int, float], layers: int) -> float:
    """Least-squares line through (layers, value), read at `layers`."""
    xs, ys = list(points), list(points.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my + slope * (layers - mx)


STAGES = {  # stage -> [(variant, child arguments after the checkpoint and output folders)]
    "export": [("plain", ["0"]), ("bounded", ["1"])],
    "lora": [("fp32", ["float32", "0"]), ("bf16+ckpt", ["bfloat16", "1"])],
    "merge": [("peft", ["peft"]), ("bounded", ["bounded"])],
}
AT_FULL = {"export": "bounded", "lora": "bf16+ckpt", "merge": "bounded"}  # what fits 24 GB at 32 layers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--full", action="store_true", help="also run each stage's bounded variant at 32 layers")
    parser.add_argument("--lora-steps", type=int, default=3, help="LoRA steps per measurement (the first is not timed)")
    parser.add_argument("--work", type=Path, help="where checkpoints and outputs go (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="modelpress-scale-"))
    rows, peaks = [], {}
    for layers in args.layers + ([FULL_LAYERS] if args.full else []):
        src = work / f"phi3-mini-{layers}"
        measure(["checkpoint", str(layers), str(src)])  # in a child: this process stays small
        for stage in args.stages:
            for variant, extra in STAGES[stage]:
                if layers == FULL_LAYERS and variant != AT_FULL[stage]:
                    continue
                out = work / f"{stage}-{layers}-{variant}"
                where = [str(src)] if stage == "lora" else [str(src), str(out)]
                more = [str(args.lora_steps)] if stage == "lora" else []
                peak, seconds, detail = measure([stage, *where, *extra, *more])
                shutil.rmtree(out, ignore_errors=True) if stage == "merge" else None
                if layers != FULL_LAYERS:
                    peaks.setdefault((stage, variant), {})[layers] = peak
                step = json.loads(detail.splitlines()[-1]).get("step_seconds") if stage == "lora" else None
                rows.append((stage, layers, variant, peak, seconds, step))
                print(f"  {stage} {layers} layers {variant}: {peak:.2f} GiB, {seconds:.0f} s", file=sys.stderr)
    print("\nPhi-3-mini-shaped random bf16 checkpoints on this CPU (each row one process; peak = its max RSS)\n")
    print("| stage | layers | variant | peak RSS GiB | seconds | seconds per LoRA step (batch 1 x 1024) |")
    print("|---|---|---|---|---|---|")
    for stage, layers, variant, peak, seconds, step in rows:
        print(f"| {stage} | {layers} | {variant} | {peak:.2f} | {seconds:.0f} | {'' if step is None else f'{step:.1f}'} |")
    if len(args.layers) >= 2:
        print(f"\nprojected to {FULL_LAYERS} layers (least squares over {', '.join(map(str, args.layers))} layers):")
        for (stage, variant), points in peaks.items():
            print(f"- {stage} {variant}: {project(points, FULL_LAYERS):.1f} GiB")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        {"export": child_export, "lora": child_lora, "merge": child_merge,
         "checkpoint": lambda layers, folder: make_checkpoint(int(layers), Path(folder))}[sys.argv[2]](*sys.argv[3:])
        print(json.dumps({"peak_gib": own_peak_gib()}))
        sys.exit(0)
    sys.exit(main())
