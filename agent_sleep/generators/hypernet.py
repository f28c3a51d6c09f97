"""The Doc-to-LoRA hypernetwork: document activations in, one rank-r LoRA per target layer out.

A Perceiver in plain PyTorch (CPU or CUDA, no flash-attention): the frozen
base model's hidden states after its first ``encoder_layers`` blocks
(``[T, hidden]`` per document) are projected to ``latent_dim``; learned latents
cross-attend to them in ``n_blocks`` blocks; one decoder query per
(layer, rank) slot cross-attends to the latents; each slot's vector is
unit-normalised and a shared head maps it to that rank's row of A and column
of B. Per-(layer, rank) scalers multiply A (init 1) and B (init **0**), so a
fresh network emits an exact no-op adapter (Sakana's D2L, arXiv 2602.15902,
trimmed to the CPU sizes of ``research/sakana.md`` section 9.2).

Two options fight the collapse to a document-independent adapter seen on CPU
runs: ``standardize`` z-scores the features per channel with statistics of the
training documents (a few channels of a mid-layer residual stream are huge
and identical for every token, drowning the content), and ``use_bias`` adds
D2L's learned bias LoRA (A random, B zero), appended once per adapter as an
extra rank block, which gives the shared prior (answer format, vocabulary) its
own place so the generated part only has to carry the document.

``b_head="copy"`` replaces the B half of the head by a pointer: each
(layer, rank) slot attends over the document's tokens and its B column is the
unit-normalised, learned linear map (initialised to the identity when the
shapes allow) of the attended features. A down_proj LoRA writes into the
residual stream, where the base model's tied embeddings live, so "copy the
value token into the answer position" becomes a short path instead of
something a 2,000-wide head must discover (the CPU runs with the mlp head
collapsed to a document-independent adapter). ``a_head="induction"`` adds to
each A row the learned map of the features of the token *before* the one its
slot points at: the slot then fires where the model has just produced that
token and writes the next one, an induction head in weight space, which is
what multi-token values (prices, times, codes: one token per digit) need.
``induction_order`` k > 1 adds the maps of the k-1 tokens before that one
(zero at initialisation, so a checkpoint of order 1 warm-starts exactly): a
value that repeats a token ("31-07-58", "QX7731K", "0412 993 207": SmolLM2
writes one token per digit) is ambiguous to a one-token key, which writes
"27-8-13" for 27-13-89; keyed on two tokens, each step has one continuation.
(Tried on CPU in issue #14, 500 steps: not enough by itself; the committed
checkpoint has order 1.)
``chunk_gate`` multiplies each
chunk's B by sigmoid(w . mean latent + 2), so a chunk with nothing worth
keeping (filler, a haystack) can switch itself off; with rank-concatenated
chunks the deltas of K chunks add up, and ungated filler chunks drown the one
that matters.

Batched over documents with a key-padding mask. This module knows nothing
about tokenisation, files or PEFT; see :mod:`agent_sleep.generators.d2l`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from agent_sleep.errors import InvalidInputError

__all__ = ["HyperConfig", "HyperNet", "HyperOutput"]


class HyperOutput(NamedTuple):
    """Everything one pass emits: the LoRA, and what meta-training can supervise directly."""

    a: Tensor  # [N, L, r, d_in]
    b: Tensor  # [N, L, d_out, r]
    pointer: Tensor | None  # [N, L*r, T]: each slot's attention over the chunk's tokens (copy head only)
    gate: Tensor | None  # [N]: each chunk's gate on B (chunk_gate only)
    # [N, T, d_in]: the induction key a slot pointing at token t would get (``explain(position_keys=True)`` only)
    position_keys: Tensor | None = None


class HyperConfig(BaseModel):
    """Shape of a hypernetwork and the base model it was built for (stored beside its weights)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    base_model_id: str
    base_content_hash: str
    hidden_size: int
    target: str = "mlp.down_proj"
    d_in: int
    d_out: int
    layers: list[int]
    rank: int = 8
    scale: float = Field(2.0, description="in-memory LoRA scale; PEFT export uses lora_alpha = scale * r_total")
    encoder_layers: int = 8
    latent_dim: int = 256
    n_latents: int = 32
    n_heads: int = 4
    n_blocks: int = 2
    mlp_ratio: int = 4
    use_bias: bool = Field(False, description="append a learned document-independent rank-r block (D2L's bias LoRA)")
    standardize: bool = Field(False, description="z-score document features per channel with stored statistics")
    scale_B_init: float = Field(0.0, description="experiments only: non-zero breaks the zero-effect start")
    b_head: Literal["mlp", "copy"] = Field(
        "mlp", description="mlp: B from the shared head; copy: B columns point at document tokens (see module doc)")
    a_head: Literal["mlp", "induction"] = Field(
        "mlp", description="induction (copy head only): A rows also match the token before the one B copies")
    induction_order: int = Field(1, ge=1, le=4, description=(
        "induction only: how many tokens before the copied one an A row matches (2: '7-' and '3-' differ)"))
    chunk_gate: bool = Field(False, description="a learned per-chunk gate in (0, 1) on B (chunks with nothing to keep)")
    min_gate: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "the generator drops chunks whose gate is below this (the default a trainer sets when it taught the gate "
        "to tell fact chunks from filler, gate_loss)"))  # fmt: skip

    def module_names(self) -> list[str]:
        """Module paths of the targets inside a ``*ForCausalLM`` (llama/mistral/qwen layout)."""
        return [f"model.layers.{i}.{self.target}" for i in self.layers]

    @classmethod
    def for_model(cls, model: Any, *, base_model_id: str, base_content_hash: str, **overrides: Any) -> HyperConfig:
        """A config for a transformers causal LM; default targets: down_proj on the top half of the layers."""
        cfg = model.config
        n_layers = int(cfg.num_hidden_layers)
        target = overrides.pop("target", "mlp.down_proj")
        probe = model.get_submodule(f"model.layers.0.{target}")
        layers = overrides.pop("layers", None)
        if layers is None:
            layers = list(range(n_layers // 2, n_layers))
        enc = overrides.pop("encoder_layers", min(8, max(1, n_layers // 4 + 1)))
        return cls(base_model_id=base_model_id, base_content_hash=base_content_hash, hidden_size=int(cfg.hidden_size),
                   target=target, d_in=int(probe.in_features), d_out=int(probe.out_features),
                   layers=[int(i) for i in layers], encoder_layers=min(int(enc), n_layers), **overrides)  # fmt: skip


class _CrossBlock(nn.Module):
    """Queries cross-attend to a context (pre-norm, residual), then a SwiGLU MLP (pre-norm, residual)."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q_norm = nn.RMSNorm(dim)
        self.kv_norm = nn.RMSNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.mlp_norm = nn.RMSNorm(dim)
        self.up = nn.Linear(dim, 2 * mlp_ratio * dim, bias=False)
        self.down = nn.Linear(mlp_ratio * dim, dim, bias=False)

    def forward(self, x: Tensor, ctx: Tensor, mask: Tensor | None) -> Tensor:
        b, nq, d = x.shape
        h = self.n_heads
        q = self.q(self.q_norm(x)).view(b, nq, h, d // h).transpose(1, 2)
        k, v = self.kv(self.kv_norm(ctx)).view(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]  # True = attend
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.o(att.transpose(1, 2).reshape(b, nq, d))
        gate, up = self.up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class HyperNet(nn.Module):
    """Maps document features ``[B, T, hidden]`` (+ mask ``[B, T]``) to LoRA A ``[B, L, r, d_in]``, B ``[B, L, d_out, r]``."""

    def __init__(self, config: HyperConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        d = c.latent_dim
        if d % c.n_heads:
            raise InvalidInputError(f"latent_dim {d} must be divisible by n_heads {c.n_heads}")
        n_slots = len(c.layers) * c.rank
        self.in_norm = nn.RMSNorm(c.hidden_size)
        self.in_up = nn.Linear(c.hidden_size, 2 * d, bias=False)
        self.in_down = nn.Linear(d, d, bias=False)
        self.latents = nn.Parameter(torch.randn(c.n_latents, d) * 0.02)
        self.blocks = nn.ModuleList(_CrossBlock(d, c.n_heads, c.mlp_ratio) for _ in range(c.n_blocks))
        self.latent_norm = nn.RMSNorm(d)
        self.queries = nn.Parameter(torch.randn(n_slots, d) * 0.02)
        self.decoder = _CrossBlock(d, c.n_heads, c.mlp_ratio)
        copy = c.b_head == "copy"
        self.head = nn.Linear(d, c.d_in if copy else c.d_in + c.d_out, bias=False)
        nn.init.normal_(self.head.weight, std=0.5 / math.sqrt(d + c.rank))
        if copy:
            self.ptr_q = nn.Linear(d, d, bias=False)
            self.ptr_k = nn.Linear(d, d, bias=False)
            self.ptr_out = nn.Linear(c.hidden_size, c.d_out, bias=False)
            if c.hidden_size == c.d_out:
                nn.init.eye_(self.ptr_out.weight)
            if c.a_head == "induction":
                self.ptr_a = nn.Linear(c.hidden_size, c.d_in, bias=False)
                self.ind_gain = nn.Parameter(torch.ones(len(c.layers), c.rank))
                self.ptr_a_more = nn.ModuleList(
                    nn.Linear(c.hidden_size, c.d_in, bias=False) for _ in range(c.induction_order - 1))
                for lin in self.ptr_a_more:
                    nn.init.zeros_(lin.weight)  # an order-1 network's function: warm starts are exact
        elif c.a_head != "mlp":
            raise InvalidInputError("a_head='induction' needs b_head='copy'")
        if c.induction_order > 1 and c.a_head != "induction":
            raise InvalidInputError("induction_order > 1 needs a_head='induction'")
        if c.chunk_gate:
            self.gate = nn.Linear(d, 1)
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, 2.0)
        self.scale_A = nn.Parameter(torch.ones(len(c.layers), c.rank))
        self.scale_B = nn.Parameter(torch.full((len(c.layers), c.rank), float(c.scale_B_init)))  # 0: zero-effect start
        if c.standardize:
            self.register_buffer("feat_mean", torch.zeros(c.hidden_size))
            self.register_buffer("feat_std", torch.ones(c.hidden_size))
        if c.use_bias:
            self.bias_A = nn.Parameter(torch.randn(len(c.layers), c.rank, c.d_in) * (0.2 / math.sqrt(c.d_in * c.rank)))
            self.bias_B = nn.Parameter(torch.zeros(len(c.layers), c.d_out, c.rank))

    @torch.no_grad()
    def set_feature_stats(self, feats: Tensor) -> None:
        """Store per-channel mean/std of document features ``[N_tokens, hidden]`` (only with ``standardize``)."""
        if self.config.standardize:
            self.feat_mean.copy_(feats.float().mean(0))
            self.feat_std.copy_(feats.float().std(0).clamp_min(1e-3))

    def concat_chunks(self, a: Tensor, b: Tensor, *, bias: bool = True) -> tuple[Tensor, Tensor]:
        """One adapter from the LoRAs of K chunks, ``a [K, L, r, in]``, ``b [K, L, out, r]``: concatenated along
        rank, chunk-major (their deltas add up), plus the bias block once if there is one (and ``bias``; meta-training
        may leave it out of some adapters, ``TrainConfig.bias_drop``).

        Returns ``a [L, R, in]``, ``b [L, out, R]`` with R = K*r (+ r). The generator and meta-training both
        build adapters here, so what is trained is what is shipped.
        """
        k, n_layers, r, d_in = a.shape
        a_cat = a.transpose(0, 1).reshape(n_layers, k * r, d_in)
        b_cat = b.permute(1, 2, 0, 3).reshape(n_layers, b.shape[2], k * r)
        if not (self.config.use_bias and bias):
            return a_cat, b_cat
        return torch.cat([a_cat, self.bias_A.to(a_cat)], dim=1), torch.cat([b_cat, self.bias_B.to(b_cat)], dim=2)

    def _encode(self, feats: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Normalised features, their projection (the context), the latents and one vector per (layer, rank) slot."""
        c = self.config
        feats = feats.to(self.head.weight.dtype)
        if c.standardize:
            feats = (feats - self.feat_mean) / self.feat_std
        normed = self.in_norm(feats)
        gate, up = self.in_up(normed).chunk(2, dim=-1)
        ctx = self.in_down(F.silu(gate) * up)
        lat = self.latents.expand(feats.shape[0], -1, -1)
        for block in self.blocks:
            lat = block(lat, ctx, mask)
        lat = self.latent_norm(lat)
        z = self.decoder(self.queries.expand(feats.shape[0], -1, -1), lat, None)
        return normed, ctx, lat, z

    def _gate(self, lat: Tensor) -> Tensor:
        return torch.sigmoid(self.gate(lat.mean(1)))[:, 0]

    @torch.no_grad()
    def chunk_gates(self, feats: Tensor, mask: Tensor | None = None) -> Tensor:
        """Each chunk's gate on B, ``[N]`` (all ones without ``chunk_gate``): how much of it the adapter keeps."""
        if not self.config.chunk_gate:
            return torch.ones(feats.shape[0], device=feats.device)
        return self._gate(self._encode(feats, mask)[2])

    def forward(self, feats: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out = self.explain(feats, mask)
        return out.a, out.b

    def _induction_key(self, shifted: Tensor, t: int, attn: Tensor | None = None) -> Tensor:
        """The induction key of each slot (``attn`` its pointer) or, without ``attn``, of each of the ``t`` positions:
        the maps of token t-1 (zeros at t = 0), then t-2, t-3, ... for a higher order, from ``shifted`` (the
        normalised features with ``induction_order`` rows of zeros in front)."""
        o = self.config.induction_order
        key: Tensor | None = None
        for k, lin in enumerate([self.ptr_a, *self.ptr_a_more], start=1):
            rows = shifted[:, o - k : o - k + t]
            part = lin(rows if attn is None else attn @ rows)
            key = part if key is None else key + part
        assert key is not None
        return key

    def explain(self, feats: Tensor, mask: Tensor | None = None, *, position_keys: bool = False) -> HyperOutput:
        """The LoRA of each chunk plus its pointer attention and gate (``forward`` keeps only the LoRA);
        ``position_keys`` (induction head only): also the key each token position would give a slot."""
        c = self.config
        normed, ctx, lat, z = self._encode(feats, mask)
        n = feats.shape[0]
        attn = gate = pos_keys = None
        if c.b_head == "copy":
            a_rows = self.head(F.normalize(z, dim=-1))
            scores = self.ptr_q(z) @ self.ptr_k(ctx).transpose(1, 2) / math.sqrt(c.latent_dim)  # [N, slots, T]
            if mask is not None:
                scores = scores.masked_fill(~mask[:, None, :], torch.finfo(scores.dtype).min)
            attn = scores.softmax(-1)
            b_rows = F.normalize(self.ptr_out(attn @ normed), dim=-1)
            if c.a_head == "induction":
                t = normed.shape[1]
                shifted = F.pad(normed, (0, 0, c.induction_order, 0))  # row k + t holds token t (zeros before 0)
                key = self._induction_key(shifted, t, attn)
                if position_keys:  # the same maps on each position's own predecessors (a one-hot pointer)
                    pos_keys = self._induction_key(shifted, t)
                ind = F.normalize(key, dim=-1).view(n, len(c.layers), c.rank, c.d_in)
                a_rows = a_rows.view(n, len(c.layers), c.rank, c.d_in) + self.ind_gain[None, :, :, None] * ind
        else:
            rows = self.head(F.normalize(z, dim=-1))
            a_rows, b_rows = rows[..., : c.d_in], rows[..., c.d_in :]
        a = a_rows.reshape(n, len(c.layers), c.rank, c.d_in) * self.scale_A[None, :, :, None]
        b = b_rows.reshape(n, len(c.layers), c.rank, c.d_out) * self.scale_B[None, :, :, None]
        if c.chunk_gate:
            gate = self._gate(lat)
            b = b * gate[:, None, None, None]
        return HyperOutput(a, b.transpose(-1, -2), attn, gate, pos_keys)
