"""Tiny offline models for tests: a random 2-layer Llama and a byte-level BPE tokenizer.

Nothing here downloads anything; a model folder builds in well under a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr

from agent_sleep.models.loader import BaseModelHandle
from agent_sleep.runtime.chat_model import ChatLocalModel, GenerationParams

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = [
    "The capital of France is Paris.",
    "You are a helpful assistant. What is the weather today?",
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
    "system user assistant tool answer question hello world 0123456789",
]


def make_tiny_tokenizer(*, pad: bool = True, chat_template: str = CHATML) -> Any:
    """A byte-level BPE tokenizer with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>" if pad else None,
    )
    fast.chat_template = chat_template
    return fast


def make_tiny_model_dir(tmp_path: Path, *, seed: int = 0, name: str = "tiny-llama", pad: bool = True,
                        init_std: float = 0.02, max_positions: int = 1024) -> Path:
    """Save a random tiny LlamaForCausalLM plus tokenizer under ``tmp_path / name``.

    ``init_std``: the weights' standard deviation. At the default (transformers' 0.02) greedy decoding
    repeats one token whatever adapter is active; at 0.2 the logits are peaked enough that greedy text
    is long, varied and different on every adapter stack (tests that tell stacks apart by their text).
    ``max_positions``: the context length (a longer one allows a longer answer).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / name
    tokenizer = make_tiny_tokenizer(pad=pad)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        initializer_range=init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if pad else None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class ScriptedChatModel(ChatLocalModel):
    """Emits fixed replies through the real decode/stream/stop/tool path.

    Overrides only ``_generate_ids``, the hook later stages use, so tests can
    check text handling deterministically on a random model. Call n gets
    ``scripts[n]`` (the last one repeats); every prompt is kept in ``prompts``.
    """

    scripts: list[str] = Field(default_factory=list)
    _calls: int = PrivateAttr(default=0)
    _prompts: list[str] = PrivateAttr(default_factory=list)

    @property
    def prompts(self) -> list[str]:
        return self._prompts

    def _generate_ids(self, handle: BaseModelHandle, input_ids: list[int], params: GenerationParams) -> Iterator[int]:
        self._prompts.append(handle.tokenizer.decode(input_ids))
        script = self.scripts[min(self._calls, len(self.scripts) - 1)]
        self._calls += 1
        ids = handle.tokenizer(script, add_special_tokens=False)["input_ids"]
        yield from ids[: params.max_new_tokens]
        if len(ids) < params.max_new_tokens:
            yield handle.tokenizer.eos_token_id
