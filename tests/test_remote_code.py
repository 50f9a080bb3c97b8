"""A trust_remote_code model whose forward predates transformers 5's `cache=` and `logits_to_keep`: the
shared-prompt-prefix paths (evaluation and training) are left out for it, and it scores as a native model."""

from __future__ import annotations

import json
import shutil

import pytest

from modelpress.data import Example
from modelpress.models import ModelRef
from modelpress.passes.catalog import HF

pytest.importorskip("torch")

OLD_STYLE = '''
from transformers import Phi3ForCausalLM


class OldStyle(Phi3ForCausalLM):
    """The forward signature of 2024's remote Phi-3 code: no cache=, no logits_to_keep, no **kwargs."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=past_key_values, inputs_embeds=inputs_embeds, labels=labels,
                               use_cache=use_cache)
'''

HEAD = "Say which tone this phrase has, one of joy, fear, sadness or surprise. Phrase: "


@pytest.fixture()
def remote_model(tiny_model, tmp_path):
    folder = tmp_path / "remote-phi3"
    shutil.copytree(tiny_model, folder)
    (folder / "custom_model.py").write_text(OLD_STYLE)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "custom_model.OldStyle"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_remote_forward_without_the_cache_argument_scores_as_the_native_model(remote_model, tiny_model):
    from modelpress.runners import TorchRunner

    examples = [Example(HEAD + phrase, tone, f"row {i}") for i, (phrase, tone) in enumerate(
        [("we won the cup", "joy"), ("the lights went out at night", "fear"), ("she left for good", "sadness"),
         ("a letter from a long lost friend", "surprise")])]
    remote = TorchRunner(ModelRef(HF, remote_model, id="remote"), trust_remote_code=True)
    assert type(remote.model).__name__ == "OldStyle" and not remote.prefix_ok
    native = TorchRunner(ModelRef(HF, tiny_model, id="native"))
    assert native.prefix_ok
    assert remote.completion_loss(examples, True) == pytest.approx(native.completion_loss(examples, True), rel=1e-5)
    assert native.shared_prefix_tokens > 0 and remote.shared_prefix_tokens == 0  # the prefix path was in play


def test_training_shares_no_prefix_through_a_remote_forward(remote_model, tiny_model):
    from transformers import AutoModelForCausalLM

    from modelpress.passes.prefix import prefix_sharing_applies

    model = AutoModelForCausalLM.from_pretrained(remote_model, trust_remote_code=True)
    assert not prefix_sharing_applies(model, 0.0, gradient_checkpointing=False, processes=1)
    native = AutoModelForCausalLM.from_pretrained(tiny_model)  # the same model under transformers' own class
    assert prefix_sharing_applies(native, 0.0, gradient_checkpointing=False, processes=1)
