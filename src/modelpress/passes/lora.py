"""LoRA and QLoRA fine-tuning with peft and the Hugging Face Trainer."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

from modelpress.context import PassContext
from modelpress.data import real_tokens
from modelpress.errors import MissingDependencyError, ModelpressError
from modelpress.fsutil import atomic_write_json
from modelpress.models import (ADAPTER_DIR, IF_NATIVE, ModelRef, load_causal_lm, load_classifier, load_tokenizer,
                               native_float16, native_training_dtype)
from modelpress.passes import early_stopping
from modelpress.passes.catalog import HF_ADAPTER, LoRAParams, QLoRAParams

log = logging.getLogger("modelpress")


def run_lora(ctx: PassContext, params: LoRAParams) -> ModelRef:
    """Train a LoRA adapter on the full-precision base."""
    return _train(ctx, params, quantization_config=None)


def run_qlora(ctx: PassContext, params: QLoRAParams) -> ModelRef:
    """Train a LoRA adapter on a base quantized to 4 bits by bitsandbytes."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise MissingDependencyError("bitsandbytes", "qlora", "The QLoRA pass") from None
    return _train(ctx, params, quantization_config=bnb_config(params))


def bnb_config(params: QLoRAParams):
    """bitsandbytes' 4-bit settings; the compute dtype is torch_dtype's unless given, as in Olive."""
    from transformers import BitsAndBytesConfig

    from modelpress.models import torch_dtype

    compute = params.compute_dtype or params.torch_dtype
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=params.quant_type,
        bnb_4bit_use_double_quant=params.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(native_training_dtype() if compute == IF_NATIVE else compute),
    )


def _train(ctx: PassContext, params: LoRAParams, quantization_config) -> ModelRef:
    if params.num_workers > 1:
        from modelpress.passes.lora_ddp import train_data_parallel

        return train_data_parallel(ctx, params, quantization_config, train_here)
    return train_here(ctx, params, quantization_config)


def train_here(ctx: PassContext, params: LoRAParams, quantization_config) -> ModelRef:
    """Train in this process (one DDP rank when torch.distributed is set up around it)."""
    tokenizer = load_tokenizer(ctx.model.path, ctx.input_model.trust_remote_code)
    labels = ctx.data.labels(params) if ctx.task == "text-classification" else None
    train, evals = _sequences(ctx, params, tokenizer, labels)
    model = _peft_model(ctx, params, quantization_config, labels)
    weights = None
    if labels:  # always modelpress's loss: transformers scales a model's own loss as if it divided by the rows of
        # every accumulated micro-batch, which a BERT classifier's mean does not (k times the loss and gradients)
        weights = class_weights([f["labels"] for f in train], len(labels)) if params.class_weight \
            else [1.0] * len(labels)
    trainer = _trainer(ctx, params, model, tokenizer, train, evals, quantized=quantization_config is not None,
                       weights=weights)
    checkpoint = latest_checkpoint(_trainer_dir(ctx))
    if checkpoint:
        log.info("resuming training from %s", checkpoint.name)
        ctx.notes.append(f"resumed from {checkpoint.name}")
        trainer.resume_order_from = checkpoint
        early_stopping.restore_count(trainer.stopping, checkpoint)
    clock = _step_clock()  # transformers is imported only when a training pass runs
    trainer.add_callback(clock)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - started
    final_eval = _final_eval(trainer) if evals else {}
    stopped = early_stopping.stopped_early(trainer, result, params.early_stopping_patience)
    model.save_pretrained(str(ctx.out / ADAPTER_DIR), safe_serialization=True)
    tokens = sum(real_tokens(f, tokenizer.pad_token_id) for f in train)
    _write_log(ctx.out, trainer, result, final_eval, seconds, len(train), len(evals or []), tokens, clock,
               _base_dtype(model, quantization_config), stopped)
    ctx.notes.append(f"trained {result.global_step} steps in {seconds:.1f} s"
                     + (f"; train loss {result.training_loss:.4f}" if clock.steps else
                        " (every step before the resume: none left to train)")
                     + (f", eval loss {final_eval['eval_loss']:.4f}" if final_eval else ""))
    ctx.notes.extend(early_stopping.notes(trainer, result, stopped, params.early_stopping_patience))
    # the prompt recipe travels with the adapter and every model made from it (cache entries included)
    task = {**{k: v for k, v in ctx.model.task.items() if k != "chat"},  # a chat format brought is not this one
            **ctx.data.prompt_recipe(params.train_data_config), "task": ctx.task,
            **({"labels": labels} if labels else {})}
    if labels:  # a classifier reads its inputs as it was trained on them
        data = ctx.data.data_config(params.train_data_config)
        task.update(max_seq_len=data.max_seq_len, add_special_tokens=data.add_special_tokens)
    return ModelRef(HF_ADAPTER, ctx.out, id="", base=Path(ctx.model.path), task=task)


def _base_dtype(model, quantization_config) -> str | None:
    """What the frozen base trained in: its 4-bit type under QLoRA, else the dtype of most of its frozen weights
    (the input embeddings may be a float32 copy trained in full, or upcast for QLoRA)."""
    if quantization_config is not None:
        return f"4-bit {quantization_config.bnb_4bit_quant_type}"
    sizes: dict = {}
    for weight in model.parameters():
        if not weight.requires_grad and weight.is_floating_point():
            sizes[weight.dtype] = sizes.get(weight.dtype, 0) + weight.numel()
    return str(max(sizes, key=sizes.get)).removeprefix("torch.") if sizes else None


def _sequences(ctx: PassContext, params: LoRAParams, tokenizer,
               labels: list[str] | None) -> tuple[list[dict], list[dict] | None]:
    """Training and eval sequences (eval is None when the pass holds out nothing)."""
    train_examples, eval_examples = ctx.data.training_examples(params)
    train = ctx.data.features(train_examples, params.train_data_config, tokenizer, labels)
    eval_name = params.eval_data_config or params.train_data_config
    capped = bool(params.eval_data_config)  # an eval data config of its own is read as any evaluation reads it
    return train, ctx.data.features(eval_examples, eval_name, tokenizer, labels, capped) if eval_examples else None


def _trained_in_float32(model):
    """peft keeps LoRA layers in float32 over a bfloat16 base, but not the copies of whole modules it trains
    (a classifier's head, modules_to_save), where AdamW's small late updates would round away: those become
    float32 too and take their inputs in float32. A head hands its float32 logits on; a module inside the
    network (embed_tokens, an o_proj) hands the next layer its activations back in the base's dtype."""
    import torch

    def to_float32(_module, args):
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    def back_to(dtype):
        def hook(_module, _args, output):
            return output.to(dtype) if torch.is_tensor(output) and output.is_floating_point() else output
        return hook

    heads = _head_names(model)
    # by weight, before any is cast: a tied model's trained embedding and head copies hold one weight, and both
    # modules need the hooks (the second saw it float32 already and was left without them)
    narrow = {id(w): w.dtype for w in model.parameters() if w.requires_grad and w.dtype != torch.float32}
    for name, module in model.named_modules():
        own = [w for w in module.parameters(recurse=False) if id(w) in narrow]
        if not own:
            continue
        base_dtype = narrow[id(own[0])]
        for weight in own:
            weight.data = weight.data.float()
        module.register_forward_pre_hook(to_float32)
        if not any(f".{head}." in f".{name}." for head in heads):
            module.register_forward_hook(back_to(base_dtype))
    return model


def _head_names(model) -> set[str]:
    """Names of the modules whose output is the model's: the LM head, a classifier's score/classifier."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    output = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    names = {"score", "classifier"}  # transformers' sequence-classification heads, which peft trains in full
    names.update(n for n, m in base.named_modules() if output is not None and m is output)
    return {n for n in names if n}


def _peft_model(ctx: PassContext, params: LoRAParams, quantization_config, labels: list[str] | None):
    from peft import get_peft_model
    from transformers import set_seed

    set_seed(params.training_args.seed)  # the LoRA init is random too: seed it, so a run is reproducible
    dtype = params.torch_dtype
    if dtype == IF_NATIVE:
        dtype = native_training_dtype()
        log.info("torch_dtype %s: training on a %s base on this machine", IF_NATIVE, dtype)
    elif dtype == "float16":  # as in Olive: a float16 base trains unstably; fp16 autocast over float32 (_trainer)
        dtype = "float32"
        if not native_float16():
            log.warning("torch_dtype float16: training under fp16 mixed precision, which this machine emulates "
                        "(no CUDA GPU, no AMX-FP16), about 20x slower than float32; torch_dtype "
                        "'bfloat16-if-native' or 'float32' train at this machine's speed")
    if labels is not None:
        model = load_classifier(ctx.model.path, labels, dtype, ctx.input_model.trust_remote_code,
                                ctx.input_model.attn_implementation)
    else:
        model = load_causal_lm(ctx.model.path, dtype, ctx.input_model.trust_remote_code,
                               ctx.input_model.attn_implementation, quantization_config)
    if quantization_config is not None:
        model = _prepare_4bit(model, params.training_args.gradient_checkpointing)
    elif params.training_args.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input under LoRA
    layers = decoder_layers(params.layers_to_transform, model.config)
    try:
        with warnings.catch_warnings():  # peft reads transformers' deprecated alias: noise, not the user's
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
            model = get_peft_model(model, adapter_config(params, "SEQ_CLS" if labels is not None else "CAUSAL_LM",
                                                         layers, _adapts_tied_embedding(model, params)))
        return _trained_in_float32(model)
    except ValueError as err:
        if params.target_modules is None and "target_modules" in str(err):
            raise ModelpressError(f"peft has no default LoRA target modules for model type "
                                  f"{model.config.model_type!r}: set target_modules in the pass (--target-modules "
                                  "for `modelpress finetune`), e.g. 'all-linear' or the attention projections "
                                  "(Phi-3: qkv_proj, o_proj; Llama: q_proj, k_proj, v_proj, o_proj)") from None
        raise


def _final_eval(trainer) -> dict:
    """The eval loss of the adapter kept: the Trainer's own evaluation of that step where it made one (its eval
    schedule ended on the last step, or load_best_model_at_end restored an evaluated step), else one more."""
    step = early_stopping.kept_step(trainer)
    done = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h and h.get("step") == step), None)
    if done is not None:
        return {k: v for k, v in done.items() if k.startswith("eval_") or k == "epoch"}
    return trainer.evaluate()


def decoder_layers(indices: list[int] | None, model_config) -> list[int] | None:
    """`layers_to_transform` as peft wants it: sorted, non-negative, each an existing layer."""
    if indices is None:
        return None
    n = getattr(model_config, "num_hidden_layers", None)
    if n is None:
        raise ModelpressError("layers_to_transform: the model's config has no num_hidden_layers, so its layers "
                              "cannot be named; remove layers_to_transform")
    bad = [i for i in indices if not -n <= i < n]
    if bad:
        raise ModelpressError(f"layers_to_transform: {bad} name no layer of this model, which has {n} "
                              f"(0..{n - 1}, or -{n}..-1 from the top)")
    return sorted({i % n for i in indices})


def adapter_config(params: LoRAParams, task_type: str, layers: list[int] | None = None, tied: bool = False):
    """The peft config for this pass's adapter type (LoRA, DoRA, LoHa or LoKr); `tied`: it trains an embedding
    that the model's head shares, and under LoRA and DoRA the two stay one matrix (peft's ensure_weight_tying), so
    the merged model keeps the tie it was brought with. (Untied, the trained table is the input embedding only:
    the head keeps the untrained one and the merged model comes out untied, as LoHa and LoKr, which peft cannot
    tie, still train it.)"""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    common = {"r": params.r, "target_modules": params.target_modules, "modules_to_save": params.modules_to_save,
              "task_type": task_type, "layers_to_transform": layers}
    kind = getattr(params, "adapter_type", "lora")
    if kind in ("loha", "lokr"):
        return (LoHaConfig if kind == "loha" else LoKrConfig)(
            alpha=params.alpha, rank_dropout=params.rank_dropout, module_dropout=params.module_dropout,
            **{key: getattr(params, key) for key in getattr(params, "peft_keys", ())}, **common)
    return LoraConfig(lora_alpha=params.alpha, lora_dropout=params.lora_dropout, use_dora=kind == "dora",
                      **({"ensure_weight_tying": True} if tied else {}), **common)


def _adapts_tied_embedding(model, params: LoRAParams) -> bool:
    """Whether the adapter trains (modules_to_save) or adapts (target_modules) an embedding or head that the model
    ties to the other."""
    from peft.utils.constants import EMBEDDING_LAYER_NAMES

    if not getattr(model.config, "tie_word_embeddings", False):
        return False
    targets = params.target_modules if isinstance(params.target_modules, list) else []
    names = {name.split(".")[-1] for name in [*(params.modules_to_save or []), *targets]}
    return bool(names & {*EMBEDDING_LAYER_NAMES, "lm_head"})


def _trainer_dir(ctx: PassContext) -> Path:
    return (ctx.work_dir or ctx.out / "work") / "trainer"


CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "adapter_model.safetensors")


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete `checkpoint-N` folder: every file there and not empty, its trainer state readable
    (transformers writes that last, unsynced, so a kill or power loss can leave it empty or cut)."""
    if not folder.is_dir():
        return None
    complete = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and _whole(p)]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _whole(checkpoint: Path) -> bool:
    """Every file there, and each as long as its own index says: a safetensors header's last tensor end, a
    torch.save zip's central directory (which comes last); a power loss can cut a file written without fsync."""
    import zipfile

    try:
        if not all((checkpoint / f).stat().st_size > 0 for f in CHECKPOINT_FILES):
            return False
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        for saved in [*checkpoint.glob("*.pt"), *checkpoint.glob("*.pth")]:  # the rng states and scaler too
            with zipfile.ZipFile(saved):
                pass
        return all(_safetensors_whole(f) for f in checkpoint.glob("*.safetensors"))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return False


def _safetensors_whole(path: Path) -> bool:
    """A safetensors file's size is its 8-byte header length, the header and the data its last tensor ends at."""
    total = path.stat().st_size
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if size > total - 8:  # a cut or garbled length: not a header to read
            return False
        header = json.loads(handle.read(size))
    ends = [t["data_offsets"][1] for name, t in header.items() if name != "__metadata__"]
    return total == 8 + size + max(ends, default=0)


def _prepare_4bit(model, gradient_checkpointing: bool):
    from peft import prepare_model_for_kbit_training

    _disable_cpu_repacking(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def _disable_cpu_repacking(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights on an eval-mode CPU forward.

    bitsandbytes 0.50 repacks a Linear4bit's weights in place the first time it runs in eval
    mode on a CPU with AVX512-BF16; training the same instance afterwards gives silently wrong
    gradients (NOTES-stack, pitfall 4). The Trainer's evaluation runs in eval mode, so the
    repacking path is switched off for every 4-bit layer before training starts.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def class_weights(targets: list[int], n_classes: int) -> list[float]:
    """'balanced' class weights: n_rows / (n_classes * n_rows_of_class); a class with no row gets 0."""
    counts = [0] * n_classes
    for t in targets:
        counts[t] += 1
    return [len(targets) / (n_classes * n) if n else 0.0 for n in counts]


def _trainer(ctx: PassContext, params: LoRAParams, model, tokenizer, train, evals, quantized: bool,
             weights: list[float] | None = None):
    from transformers import Trainer, TrainingArguments

    from modelpress.data import Collator
    from modelpress.passes.batch_order import ResumableOrder
    from modelpress.passes.losses import AnswerCollator, answer_loss, slices_logits, weighted_class_loss
    from modelpress.passes.prefix import prefix_sharing_applies, prefix_sharing_trainer
    from modelpress.progress import use_modelpress_output

    ta = params.training_args
    eval_strategy = ta.eval_strategy if evals else "no"
    if ta.eval_strategy != "no" and not evals:
        log.warning("training_args.eval_strategy is %r but the pass has no eval data "
                    "(set eval_dataset_size or eval_data_config); training without evaluation",
                    ta.eval_strategy)
    args = TrainingArguments(
        output_dir=str(_trainer_dir(ctx)),
        save_strategy=ta.save_strategy, save_steps=ta.save_steps if ta.save_steps < 1 else int(ta.save_steps),
        save_total_limit=1, save_only_model=False,
        seed=ta.seed, data_seed=ta.data_seed,
        per_device_train_batch_size=ta.per_device_train_batch_size,
        per_device_eval_batch_size=ta.per_device_eval_batch_size,
        gradient_accumulation_steps=ta.gradient_accumulation_steps,
        activation_checkpointing=ta.gradient_checkpointing and not quantized,
        learning_rate=ta.learning_rate, num_train_epochs=ta.num_train_epochs, max_steps=ta.max_steps,
        logging_steps=ta.logging_steps, logging_first_step=True,
        eval_strategy=eval_strategy, eval_steps=ta.eval_steps if eval_strategy == "steps" else None,
        load_best_model_at_end=ta.load_best_model_at_end and bool(evals),
        metric_for_best_model="loss" if evals and (ta.load_best_model_at_end or params.early_stopping_patience)
        else None,
        train_sampling_strategy="group_by_length" if ta.group_by_length else "random",
        adam_beta1=ta.adam_beta1, adam_beta2=ta.adam_beta2, adam_epsilon=ta.adam_epsilon,
        weight_decay=ta.weight_decay, max_grad_norm=ta.max_grad_norm, bf16=ta.bf16,
        fp16=params.torch_dtype == "float16",
        # transformers 5 folds warmup_ratio into warmup_steps (a float below 1 is a ratio)
        warmup_steps=ta.warmup_steps or ta.warmup_ratio, lr_scheduler_type=ta.lr_scheduler_type,
        lr_scheduler_kwargs=dict(ta.lr_scheduler_kwargs),
        report_to=[], disable_tqdm=not ctx.show_progress,
        remove_unused_columns=False, dataloader_pin_memory=False,
        use_cpu=not _cuda_available(),  # train where the fastest device is; the EP is the inference target
    )
    collate, loss = Collator(tokenizer.pad_token_id), None
    if weights:
        loss = weighted_class_loss(weights)
    elif ctx.task != "text-classification" and slices_logits(model):
        collate, loss = AnswerCollator(collate), answer_loss  # logits only where a label is trained
    trainer_class = Trainer
    shares = bool(ctx.task != "text-classification" and params.share_prompt_prefix
                  and prefix_sharing_applies(model, params.adapter_dropout, ta.gradient_checkpointing,
                                             # one process on several GPUs: the Trainer's DataParallel, whose
                                             # scatter would hand every replica the whole batch's prefix cache
                                             params.num_workers * max(args.n_gpu, 1)))
    if shares:
        trainer_class = prefix_sharing_trainer()  # a batch's common prompt head runs once, not once per row
    if ta.group_by_length:  # its order must survive a resume (batch_order)
        trainer_class = type("LengthGroupedTrainer", (ResumableOrder, trainer_class), {})
    trainer = trainer_class(model=model, args=args, train_dataset=train, eval_dataset=evals,
                            data_collator=collate, compute_loss_func=loss)
    trainer.stopping = early_stopping.stopping_callback(params.early_stopping_patience,
                                                        params.early_stopping_threshold, bool(evals))
    if trainer.stopping:
        trainer.add_callback(trainer.stopping)
    # the Trainer prints every log as a raw dict; modelpress shows the loss on the bar, or as plain log lines
    use_modelpress_output(trainer, bars=ctx.show_progress, label="training")
    trainer.shares_prompt_prefix = shares
    return trainer


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _step_clock():
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """When the first optimizer step of this run ended, and the last: the steady rate leaves out the
        first step (kernel warm-up, first allocations) and the Trainer's set-up."""

        first = last = None
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.first = self.first or now
            self.last, self.steps = now, self.steps + 1

        def steady_seconds_per_step(self) -> float | None:
            return (self.last - self.first) / (self.steps - 1) if self.steps > 1 else None

    return StepClock()


def _write_log(out: Path, trainer, result, final_eval: dict, seconds: float, n_train: int, n_eval: int,
               tokens_per_epoch: int, clock=None, base_dtype: str | None = None, stopped: dict | None = None
               ) -> None:
    state = trainer.state
    steps = result.global_step
    args = trainer.args
    # real (unpadded) tokens in an optimizer step: its sequences (on every data-parallel worker) times the mean
    # training sequence length
    tokens_per_step = tokens_per_epoch / max(n_train, 1) * args.per_device_train_batch_size \
        * args.gradient_accumulation_steps * max(getattr(args, "world_size", 1) or 1, 1)
    tokens_seen = tokens_per_step * steps
    trained_now = clock.steps if clock else steps  # after a resume: the steps of this call, which `seconds` times
    steady = clock.steady_seconds_per_step() if clock else None
    atomic_write_json(out / "training_log.json", {
        "steps": steps,
        "train_seconds": round(seconds, 3),
        "train_loss": result.training_loss if trained_now else None,
        "base_dtype": base_dtype,
        "autocast": {"fp16": "float16", "bf16": "bfloat16"}.get(str(trainer.accelerator.mixed_precision)),
        "shared_prompt_prefix": getattr(trainer, "shares_prompt_prefix", False),
        "final_eval": final_eval,
        "stopped_early": stopped,
        "kept_step": early_stopping.kept_step(trainer),
        "train_sequences": n_train,
        "eval_sequences": n_eval,
        "approx_training_tokens": int(tokens_seen),
        "training_tokens_per_second": round(tokens_per_step * trained_now / seconds, 1) if seconds and trained_now
        else None,
        # after the first step: what a longer run of the same settings approaches
        "steady_seconds_per_step": round(steady, 4) if steady else None,
        "steady_training_tokens_per_second":
            round(tokens_per_step / steady, 1) if steady else None,
        "log_history": state.log_history,
    })
