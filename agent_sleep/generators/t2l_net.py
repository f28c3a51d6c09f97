"""The Text-to-LoRA hypernetwork: a description embedding in, one rank-r LoRA per (layer, module) slot out.

Sakana's T2L (arXiv 2506.06105, ``HyperModulator``) in plain PyTorch, at the
CPU sizes of ``research/sakana.md`` section 9.2: the frozen description
embedding goes through a linear task encoder (+ LayerNorm); learned layer-depth
and module-type embeddings (+ LayerNorm) are concatenated to it, one vector per
target slot; a shared trunk (a mixer MLP, residual MLP blocks, an output MLP)
maps each slot to ``head_in`` features, and one linear head per module type
(T2L's "L" variant, the cheapest to run and the simplest to train) emits that
slot's A (``r x d_in``) and B (``d_out x r``) at once.

Zero-effect start (T2L's "bias-HyperInit"): the heads' weights are zero and
their biases hold a PEFT-style fresh LoRA (A uniform in +-1/sqrt(d_in), B = 0),
so a fresh network emits the same no-op adapter for every description, and a
hypernetwork whose training failed cannot break the base model. The biases
then carry what every skill shares (the description-independent part, a
multi-task LoRA); the weights carry what the description changes.

Everything is batched over descriptions: ``forward(emb [N, E])`` returns
``{module path: (A [N, r, d_in], B [N, d_out, r])}``, which is exactly what
:class:`~agent_sleep.generators.backbone.RowLora` applies per batch row. This
module knows nothing about text encoders, tokenisation, files or PEFT; see
:mod:`agent_sleep.generators.t2l`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from agent_sleep.errors import InvalidInputError
from agent_sleep.generators.checkpoint import CheckpointFormat

__all__ = ["T2L_FORMAT", "T2LConfig", "T2LNet"]

Encoder = Literal["all-minilm-l6-v2", "base-mean"]


class T2LConfig(BaseModel):
    """Shape of a T2L hypernetwork, its description encoder and the base model it was built for."""

    model_config = ConfigDict(extra="allow", frozen=True)

    base_model_id: str
    base_content_hash: str
    targets: list[str] = Field(default_factory=lambda: ["self_attn.q_proj", "self_attn.v_proj"])
    d_in: list[int] = Field(description="input width of each target module, in ``targets`` order")
    d_out: list[int] = Field(description="output width of each target module, in ``targets`` order")
    layers: list[int]
    rank: int = Field(8, ge=1)
    scale: float = Field(2.0, description="in-memory LoRA scale; PEFT export uses lora_alpha = scale * r")
    encoder: Encoder = Field("all-minilm-l6-v2", description="what embeds descriptions (see t2l.embed_descriptions)")
    emb_dim: int = Field(384, description="the encoder's embedding width")
    task_dim: int = 64
    pos_dim: int = 32
    head_in: int = 256
    n_blocks: int = 2

    @property
    def latent(self) -> int:
        return self.task_dim + 2 * self.pos_dim

    def module_names(self) -> list[str]:
        """Module paths of all target slots inside a ``*ForCausalLM``, layer-major (llama/mistral/qwen layout)."""
        return [f"model.layers.{i}.{t}" for i in self.layers for t in self.targets]

    @classmethod
    def for_model(cls, model: Any, *, base_model_id: str, base_content_hash: str, **overrides: Any) -> T2LConfig:
        """A config for a transformers causal LM; default targets: q_proj and v_proj of the top half of the layers."""
        n_layers = int(model.config.num_hidden_layers)
        targets = list(overrides.pop("targets", ["self_attn.q_proj", "self_attn.v_proj"]))
        probes = [model.get_submodule(f"model.layers.0.{t}") for t in targets]
        layers = overrides.pop("layers", None)
        if layers is None:
            layers = list(range(n_layers // 2, n_layers))
        return cls(base_model_id=base_model_id, base_content_hash=base_content_hash, targets=targets,
                   d_in=[int(p.in_features) for p in probes], d_out=[int(p.out_features) for p in probes],
                   layers=[int(i) for i in layers], **overrides)  # fmt: skip


class _Residual(nn.Module):
    """x + MLP(LayerNorm(x)), SiLU, 4x wide."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(torch.nn.functional.silu(self.up(self.norm(x))))


class T2LNet(nn.Module):
    """Maps description embeddings ``[N, emb_dim]`` to one LoRA per target module, batched over descriptions."""

    def __init__(self, config: T2LConfig) -> None:
        super().__init__()
        c = config
        if not (len(c.targets) == len(c.d_in) == len(c.d_out)) or not c.targets or not c.layers:
            raise InvalidInputError("T2LConfig needs at least one target and layer, and d_in/d_out for each target")
        self.config = c
        m = c.latent
        self.task = nn.Sequential(nn.Linear(c.emb_dim, c.task_dim), nn.LayerNorm(c.task_dim))
        self.depth = nn.Embedding(len(c.layers), c.pos_dim)
        self.depth_norm = nn.LayerNorm(c.pos_dim)
        self.kind = nn.Embedding(len(c.targets), c.pos_dim)
        self.kind_norm = nn.LayerNorm(c.pos_dim)
        self.mixer = nn.Sequential(nn.Linear(m, 4 * m), nn.SiLU(), nn.Linear(4 * m, m))
        self.blocks = nn.ModuleList(_Residual(m) for _ in range(c.n_blocks))
        self.out = nn.Sequential(nn.LayerNorm(m), nn.Linear(m, 4 * m), nn.SiLU(), nn.Linear(4 * m, c.head_in))
        self.heads = nn.ModuleList(nn.Linear(c.head_in, c.rank * (di + do)) for di, do in zip(c.d_in, c.d_out,
                                                                                               strict=True))
        with torch.no_grad():
            for head, d_in in zip(self.heads, c.d_in, strict=True):
                head.weight.zero_()  # zero-effect start: every description gets the bias LoRA, whose B is 0
                head.bias.zero_()
                bound = 1.0 / math.sqrt(d_in)  # PEFT's default A: kaiming-uniform(a=sqrt(5)) = U(+-1/sqrt(in))
                head.bias[: c.rank * d_in].uniform_(-bound, bound)

    def slots(self, emb: Tensor) -> Tensor:
        """The trunk's output per (description, layer, module): ``[N, L, M, head_in]``."""
        c = self.config
        n, n_layers, n_mod = emb.shape[0], len(c.layers), len(c.targets)
        task = self.task(emb.to(self.task[0].weight.dtype))[:, None, None, :].expand(n, n_layers, n_mod, -1)
        depth = self.depth_norm(self.depth.weight)[None, :, None, :].expand(n, n_layers, n_mod, -1)
        kind = self.kind_norm(self.kind.weight)[None, None, :, :].expand(n, n_layers, n_mod, -1)
        x = self.mixer(torch.cat([task, depth, kind], dim=-1))
        for block in self.blocks:
            x = block(x)
        return self.out(x)

    def forward(self, emb: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """``{module path: (A [N, r, d_in], B [N, d_out, r])}`` for descriptions ``emb [N, emb_dim]``."""
        c = self.config
        if emb.dim() != 2 or emb.shape[1] != c.emb_dim:
            raise InvalidInputError(f"description embeddings must be [N, {c.emb_dim}], got {tuple(emb.shape)}")
        h = self.slots(emb)
        out: dict[str, tuple[Tensor, Tensor]] = {}
        r = c.rank
        for mi, (target, head, d_in, d_out) in enumerate(zip(c.targets, self.heads, c.d_in, c.d_out, strict=True)):
            flat = head(h[:, :, mi])  # [N, L, r*(d_in+d_out)]
            a = flat[..., : r * d_in].unflatten(-1, (r, d_in))
            b = flat[..., r * d_in :].unflatten(-1, (r, d_out)).transpose(-1, -2)
            for li, layer in enumerate(c.layers):
                out[f"model.layers.{layer}.{target}"] = (a[:, li], b[:, li])
        return out


T2L_FORMAT = CheckpointFormat("T2L", "agent-sleep-t2l-hypernet", "t2l_config.json", T2LConfig, T2LNet)
