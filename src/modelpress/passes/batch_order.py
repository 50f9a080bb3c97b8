"""A length-grouped batch order that survives a resumed training run.

transformers' `group_by_length` sampler draws each epoch's order from the global random state when
the epoch starts. A run resumed in the middle of an epoch draws it before it restores the random
state of the checkpoint, so after the first epoch it gets another order and skips the first batches
of that one: some rows train twice and others not at all, and the adapter differs from a run never
stopped. Here the sampler records the random state its epoch's order was drawn from, each
checkpoint keeps it (safetensors, no pickle), and the resumed epoch draws its order from it again. A
run that is never stopped draws exactly as transformers does.
"""

from __future__ import annotations

from pathlib import Path

ORDER_FILE = "batch_order_rng.safetensors"


class ResumableOrder:
    """A Trainer mixin. `resume_order_from` (a checkpoint folder) is set before `train` resumes from it."""

    resume_order_from: Path | None = None

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if not hasattr(sampler, "generator"):  # not the length-grouped sampler
            return sampler
        saved = Path(self.resume_order_from) / ORDER_FILE if self.resume_order_from else None
        self._order = RecordedOrder(sampler, saved if saved is not None and saved.is_file() else None)
        return self._order

    def _save_checkpoint(self, model, trial):
        # written before transformers' files: its trainer_state.json, written last, marks a checkpoint complete
        # (lora.latest_checkpoint), and older checkpoints are rotated away right after it
        order = getattr(self, "_order", None)
        if order is not None and order.drawn_from is not None:
            from safetensors.torch import save_file

            import torch

            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            save_file({"rng_state": order.drawn_from, "epoch": torch.tensor([order.epoch])}, str(folder / ORDER_FILE))
        super()._save_checkpoint(model, trial)


class RecordedOrder:
    """Wraps the length-grouped sampler: records the random state each epoch's order is drawn from, and
    draws the resumed epoch's order from the state a checkpoint saved."""

    def __init__(self, inner, saved: Path | None):
        self.inner, self.saved = inner, saved
        self.epoch, self.drawn_from = 0, None

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it before each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        import torch

        state = self._saved_state()
        if state is None:  # draws from the global random state, as transformers does
            self.inner.generator, self.drawn_from = None, torch.get_rng_state()
        else:
            generator = torch.Generator()
            generator.set_state(state)
            self.inner.generator, self.drawn_from = generator, state
        return iter(self.inner)

    def _saved_state(self):
        """The checkpoint's state for this epoch, once (the epochs after it draw as usual)."""
        if self.saved is None:
            return None
        from safetensors.torch import load_file

        saved, self.saved = load_file(str(self.saved)), None
        return saved["rng_state"] if int(saved["epoch"][0]) == self.epoch else None
