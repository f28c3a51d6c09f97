"""The D2L meta-training recipe: config, setup, in-context baseline, held-out eval, checkpoints, the step loop.

``meta_train.py`` is its command line; the loss and the accuracy measure live in :mod:`pipelines.d2l.objective`.
"""

from __future__ import annotations

import json
import os
import random
from copy import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)
from torch import Tensor

from agent_sleep.generators.backbone import RowLora
from agent_sleep.generators.checkpoint import save_checkpoint
from agent_sleep.generators.hypernet import HyperConfig, HyperNet
from pipelines.d2l import haystacks, pages, prose, recon, synth, written
from pipelines.d2l.data import CachedDoc, attach_answer_positions, build_cache, cache_key
from pipelines.d2l.objective import (  # aux_losses, group_loras, greedy_accuracy: also imported from here
    address_loss,
    aux_losses,
    capture_inputs,
    cd_loss,
    chunk_loras,
    doc_loras,
    greedy_accuracy,
    group_loras,
    key_overlap,
    per_doc_mean,
    pointer_entropy,
    qa_loss,
)
# StopSignals: also imported from here
from pipelines.training import StepLog, StopSignals, append_jsonl, lr_factor, run_loop

__all__ = ["DataConfig", "HyperSettings", "TrainConfig", "grow_rank", "make_docs", "train"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Quiet(_Strict):
    """A config whose ``_QUIET`` fields are left out of its dump while they hold their defaults.

    Fields added after runs and checkpoints were recorded: an older recipe dumps (run config, cache keys,
    checkpoint metadata, export's "trained on the same data" check) exactly as before they existed.
    """

    _QUIET: frozenset[str] = frozenset()

    @model_serializer(mode="wrap")
    def _leave_out_quiet_defaults(self, handler: SerializerFunctionWrapHandler) -> Any:
        out = handler(self)
        for name in self._QUIET:
            if getattr(self, name) == type(self).model_fields[name].default:
                out.pop(name, None)
        return out


class DataConfig(_Quiet):
    n_train: int = 800
    n_eval: int = 48
    n_facts: tuple[int, int] = (1, 3)
    n_filler: tuple[int, int] = (0, 2)
    vocab_size: int | None = 16
    attributes: list[str] = list(synth.ATTRIBUTES)
    max_doc_tokens: int = 128
    use_probe_qa: bool = False
    chunk_probs: list[float] = [1.0]  # P(an adapter is built from K = 1, 2, ... documents, one chunk each)
    n_hay: int = 0  # filler-only documents (no questions) cached as distractor chunks
    p_hay: float = 0.0  # probability that an adapter also gets 1..max_hay distractor chunks
    max_hay: int = 1
    hay_sentences: tuple[int, int] = (2, 16)
    fact_hay: tuple[int, int] = (0, 0)  # haystack sentences mixed into each fact document (needle-like chunks)
    prose_share: float = 0.0  # share of training and eval documents that are prose-like (pipelines/d2l/prose.py)
    prose_facts: tuple[int, int] = (3, 6)
    # share of documents that are realistic pages (pipelines/d2l/pages.py: many domains and layouts, 150-600 tokens)
    pages_share: float = 0.0
    pages_facts: tuple[int, int] = (6, 8)
    pages_tokens: tuple[int, int] = (150, 600)
    # share of documents that are real prose with self-supervised reconstruction and completion rows instead of
    # questions (pipelines/d2l/recon.py, GenerativeAdapter's pre-training signal): recon_tokens long (estimated),
    # recon_rows reconstruction rows of recon_window words each plus one completion row
    recon_share: float = 0.0
    recon_tokens: tuple[int, int] = (128, 320)
    recon_window: int = 12
    recon_rows: int = 3
    # the prompts training questions are asked in (agent_sleep.generators.prompts.PROMPT_STYLES), one per question by
    # a hash of its text: "bare" ChatML (what the generator was always trained on), "chat" (the tokenizer's template
    # with its default system message: what `ask`, the chat model and the served API send), "agent" (the template with
    # an agent's system prompt). The trainer's held-out eval always asks bare.
    prompt_styles: tuple[Literal["bare", "chat", "agent"], ...] = ("bare",)
    # Filler styles of pipelines/d2l/haystacks.py (training styles only; the held-out ones are refused): when set,
    # the n_hay distractor chunks are drawn from them (hay_sentences units each) instead of synth's haystack
    # sentences, and needle_share of the documents are needle-like fact documents: one needle of a training form
    # (several wordings and value types) in needle_units units of one of these styles.
    hay_styles: list[str] = []
    needle_share: float = 0.0
    needle_units: tuple[int, int] = (0, 10)
    needle_forms: list[str] | None = None  # the needle forms drawn (None: every training form of haystacks)
    # The needles' filler styles (None: hay_styles). ``pages`` here puts a needle among a generated page's own facts
    # (all supervised and asked); in hay_styles it would make whole pages gate negatives, which they are not.
    needle_styles: list[str] | None = None
    # Open values of many lengths (synth.VARIED_VALUES, haystacks.VARIED_NEEDLE_VALUES): magic numbers and codes of
    # 2-10 digits instead of one length, so an answer's length has to come from the document.
    varied_values: bool = False
    # needle_shape_mix: the share of identifier needles (haystacks.IDENTIFIER_FORMS: number, code, serial, ...) that
    # state another identifier form's value, so a value's shape must come from the document, not the question.
    needle_shape_mix: float = Field(0.0, ge=0.0, le=1.0)
    # Hand-written training pages (pipelines/d2l/written.py): folders (relative to the repository, or absolute) whose
    # "train" questions train, each page listed written_repeat times among the training documents (on top of
    # n_train); eval_written: a folder whose "eval" questions replace the generated held-out documents as the
    # trainer's eval set (so ckpt/best is picked on hand-written pages that never train).
    written_dirs: list[str] = []
    written_repeat: int = 1
    eval_written: str | None = None

    _QUIET = frozenset({"pages_share", "pages_facts", "pages_tokens", "recon_share", "recon_tokens", "recon_window",
                        "recon_rows", "prompt_styles", "hay_styles", "needle_share", "needle_units", "needle_forms",
                        "needle_styles", "written_dirs", "written_repeat", "eval_written", "varied_values",
                        "needle_shape_mix"})

    @field_validator("prompt_styles")
    @classmethod
    def _some_style(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("prompt_styles needs at least one style")
        return v

    @model_validator(mode="after")
    def _check_styles(self) -> DataConfig:
        haystacks.check_train([*self.hay_styles, *(self.needle_styles or [])], self.needle_forms or ())
        if self.needle_forms is not None and not self.needle_forms:
            raise ValueError("needle_forms needs at least one form (or null: every training form)")
        if self.needle_share and not (self.needle_styles or self.hay_styles):
            raise ValueError("needle_share needs hay_styles (or needle_styles) to hide the needles in")
        return self


# HyperConfig fields the recipe does not set in its ``hyper`` block: the base model's identity and sizes, the LoRA
# layers (all from ``first_lora_layer`` up) and the generator's chunk pruning (``min_gate``: set when the recipe
# teaches the chunk gate, ``gate_loss``). Every other HyperConfig field is a setting, with HyperConfig's default.
_FROM_MODEL = frozenset({"base_model_id", "base_content_hash", "hidden_size", "d_in", "d_out", "layers", "min_gate"})

HyperSettings = create_model(
    "HyperSettings",
    __base__=_Strict,
    __module__=__name__,
    __doc__="The ``hyper`` block of a recipe: HyperConfig's own fields (same types and defaults) + first_lora_layer.",
    first_lora_layer=(int, Field(14, description="LoRA on this layer and every one above it")),
    **{name: (info.annotation, copy(info)) for name, info in HyperConfig.model_fields.items()
       if name not in _FROM_MODEL},
)  # fmt: skip


class TrainConfig(_Quiet):
    model: str = "smollm2-135m-instruct"
    seed: int = 0
    data: DataConfig = DataConfig()
    hyper: HyperSettings = HyperSettings()
    steps: int = 900
    docs_per_step: int = 8
    qas_per_doc: int = 2
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: int = 20
    weight_decay: float = 0.01
    clip: float = 1.0
    l1: float = 1e-3
    log_every: int = 5
    ckpt_every: int = 25
    eval_every: int = 100
    eval_max_new_tokens: int = 8
    threads: int = 2
    # Auxiliary losses on what the synthetic data knows (copy head / chunk gate only). pointer_loss: every slot's
    # pointer should rest on the tokens of stated values, and every value token should get some slot (each digit
    # of a number included); gate_loss: binary cross-entropy of the chunk gate, 1 on fact documents, 0 on filler.
    pointer_loss: float = 0.0
    gate_loss: float = 0.0
    # pointer_sharp: weight of the slots' pointer entropy on value-stating chunks (objective.pointer_entropy): each
    # slot rests on one token instead of spreading over a long value.
    pointer_sharp: float = 0.0
    # key_distinct: weight of the overlap between the induction keys of a value's tokens (objective.key_overlap;
    # induction head only): tokens that follow the same token must still get keys a slot can tell apart.
    key_distinct: float = 0.0
    key_distinct_nearest: bool = False  # each value token's overlap with its nearest other key only
    # induction_more_lr: learning-rate multiplier of the higher-order induction maps (HyperNet.ptr_a_more, the maps
    # of tokens t-2, t-3, ...). Grown from zero on a warm start, they stay small at the common rate, so the keys of
    # two tokens that follow the same token (the "1" after "27-" and the "8" after "13-") stay alike.
    induction_more_lr: float = Field(1.0, gt=0)
    # address_loss: weight of the addressing loss (objective.address_loss; copy head only): at the position where
    # the student starts its answer, its down_proj inputs should match the A rows of the slots whose pointer rests
    # on the answer's first token in the document, more than any other slot's (InfoNCE over the adapter's slots,
    # cosine / address_tau). Questions whose answer is not verbatim in the document are skipped.
    address_loss: float = 0.0
    address_tau: float = Field(0.1, gt=0)
    # bias_drop: share of training adapters built without the bias block (HyperNet.use_bias; the generator always
    # appends it). The block is the same for every document, so it learns the answer's shape from the question's
    # wording alone ("2084" for any magic number, "KV-95" asked a keypad code); an adapter without it must take the
    # shape from the page as well as the characters.
    bias_drop: float = Field(0.0, ge=0.0, lt=1.0)
    # Warm start: a D2L checkpoint folder (e.g. another run's ckpt/best) whose weights initialise the network; it
    # must have this recipe's shape, or a lower rank or induction order (grown so that step 0 is the checkpoint's
    # adapter). Only for a fresh run dir (a resumed run continues from its own state).
    init_from: str | None = None
    # Amortised context distillation (pipelines/d2l/teacher.py): the student (base + generated adapter, question
    # only) is pulled towards the base model with the document in its prompt, a top-k KL on the gold answer's
    # tokens (objective.topk_kl), weighted cd_loss; ce_weight weighs the gold-answer cross-entropy beside it. The
    # teacher's top-k is computed once per training document and question and kept in cd_cache (default:
    # RUN_DIR/teacher), one file per document named by a content hash: resumable and shareable between runs.
    cd_loss: float = 0.0
    cd_top_k: int = Field(16, ge=1)
    cd_cache: str | None = None
    ce_weight: float = 1.0
    # What the student is distilled on. "gold": the teacher's top-k on the gold answer's tokens (the teacher answers
    # in sentences, so it puts ~1 % on the gold answer's first token: a poor signal). "generated" (Sakana's): the
    # teacher's own greedy answer (at most cd_max_new_tokens tokens, to its end of turn), cached with its top-k at each
    # of its tokens; the student is trained on those tokens after the question-only prompt (KL, and ce_weight * CE on
    # them). cd_only_correct: a training question whose teacher answer does not contain the gold answer
    # (answer_matches, the benchmark's rule) keeps the gold answer with CE only (no KL) instead.
    cd_target: Literal["gold", "generated"] = "gold"
    cd_max_new_tokens: int = Field(24, ge=1)
    cd_only_correct: bool = False
    # cd_cut "sentence" (generated mode): each teacher answer ends after its first sentence (then the end-of-turn
    # token, all the teacher mass of that last row on it: pipelines/d2l/teacher.cut_answer). Uncut answers run to
    # the cd_max_new_tokens cap ~60 % of the time, the gold-answer match (cd_only_correct) is judged on the cut
    # text, and the cache key includes the rule (uncut caches are never read by a cutting recipe).
    cd_cut: Literal["none", "sentence"] = "none"

    _QUIET = frozenset({"cd_loss", "cd_top_k", "cd_cache", "ce_weight", "cd_target", "cd_max_new_tokens",
                        "cd_only_correct", "cd_cut", "pointer_sharp", "key_distinct",
                        "key_distinct_nearest", "induction_more_lr", "address_loss", "address_tau", "bias_drop"})

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        import yaml

        return cls.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})


# ---------------------------------------------------------------- schedule, batches, documents, metrics


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    return lr_factor(step, warmup=cfg.warmup, steps=cfg.steps, lr=cfg.lr, min_lr=cfg.min_lr)


def _batch(step: int, cfg: TrainConfig, n: int) -> list[tuple[int, int]]:
    """(doc index, qa seed) for ``step``: epoch-wise permutations, so a resumed run sees the same order."""
    out = []
    for slot in range(step * cfg.docs_per_step, (step + 1) * cfg.docs_per_step):
        epoch, k = divmod(slot, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        out.append((int(perm[k]), slot))
    return out


def _groups(step: int, cfg: TrainConfig, n_docs: int, n_hay: int) -> list[list[int]]:
    """Partition batch slots ``0..n_docs-1`` into adapters of K documents (K ~ ``chunk_probs``); distractor
    chunks get indices ``n_docs + h`` for hay document ``h``. Deterministic in (seed, step)."""
    d = cfg.data
    rng = random.Random(f"{cfg.seed}:groups:{step}")
    groups, i = [], 0
    while i < n_docs:
        k = rng.choices(range(1, len(d.chunk_probs) + 1), weights=d.chunk_probs)[0]
        members = list(range(i, min(n_docs, i + k)))
        i += k
        if n_hay and rng.random() < d.p_hay:
            members += [n_docs + rng.randrange(n_hay) for _ in range(rng.randint(1, d.max_hay))]
        rng.shuffle(members)
        groups.append(members)
    return groups


def make_docs(d: DataConfig, seed: int, n_eval: int | None = None) -> tuple[list[synth.Doc], list[synth.Doc]]:
    """Training and held-out documents of a data config (held-out: seed + 1, unseen entities): fact documents
    and, for ``prose_share``, prose-like ones, for ``pages_share``, realistic pages, for ``recon_share``, real
    prose with reconstruction and completion rows and, for ``needle_share``, needles in ``hay_styles`` filler."""
    opts = {"n_facts": tuple(d.n_facts), "n_filler": tuple(d.n_filler), "vocab_size": d.vocab_size,
            "attributes": d.attributes, "n_hay": tuple(d.fact_hay), "varied_values": d.varied_values}  # fmt: skip
    out = []
    for n, s, split in ((d.n_train, seed, "train"), (d.n_eval if n_eval is None else n_eval, seed + 1, "heldout")):
        n_prose, n_pages, n_recon = round(n * d.prose_share), round(n * d.pages_share), round(n * d.recon_share)
        n_needle = round(n * d.needle_share)
        docs = synth.make_fact_docs(n - n_prose - n_pages - n_recon - n_needle, s, split, **opts)
        if n_prose:
            docs += prose.make_prose_docs(n_prose, s, split, n_facts=tuple(d.prose_facts))
        if n_pages:
            docs += pages.make_pages(n_pages, s, split, n_facts=tuple(d.pages_facts), tokens=tuple(d.pages_tokens))
        if n_recon:
            docs += recon.make_recon_docs(n_recon, s, split, tokens=tuple(d.recon_tokens), window=d.recon_window,
                                          n_recon=d.recon_rows)  # fmt: skip
        if n_needle:
            docs += haystacks.make_needle_fact_docs(n_needle, s, split, styles=d.needle_styles or d.hay_styles,
                                                    forms=d.needle_forms or haystacks.TRAIN_NEEDLES,
                                                    n_units=tuple(d.needle_units),
                                                    varied_values=d.varied_values,
                                                    shape_mix=d.needle_shape_mix)  # fmt: skip
        out.append(docs)
    if d.written_dirs:
        out[0] += written.load_written([_repo_path(p) for p in d.written_dirs], "train") * d.written_repeat
    if d.eval_written:
        out[1] = written.load_written([_repo_path(d.eval_written)], "eval")
    return out[0], out[1]


def _repo_path(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else pages.ROOT / p


def plot_metrics(metrics: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    tr = [r for r in recs if r.get("kind") == "train"]
    ev = [r for r in recs if r.get("kind") == "eval"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if tr:
        ax1.plot([r["step"] for r in tr], [r["ce"] for r in tr], label="train CE (answer tokens)")
    if ev:
        ax1.plot([r["step"] for r in ev], [r["eval_ce"] for r in ev], "o-", label="held-out CE, D2L")
        ax1.axhline(ev[-1]["eval_ce_base"], color="grey", ls="--", label="held-out CE, no adapter")
        ax2.plot([r["step"] for r in ev], [r["acc"] for r in ev], "o-", label="D2L (no document)")
        for key, label in (("acc_shuffled", "D2L, another document's adapter"), ("acc_k3", "D2L, 3 documents in one")):
            pts = [(r["step"], r[key]) for r in ev if key in r]
            if pts:
                ax2.plot(*zip(*pts, strict=True), ".--", label=label)
        ax2.axhline(ev[-1]["acc_base"], color="grey", ls="--", label="base, no document")
        ax2.axhline(ev[-1]["acc_with_doc"], color="green", ls=":", label="base, document in context")
    ax1.set_xlabel("step")
    ax1.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("held-out answer accuracy")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- setup


def hyper_config(cfg: TrainConfig, handle: Any) -> HyperConfig:
    """The hypernetwork's shape for the base model of ``handle``: the recipe's ``hyper`` settings, LoRA on every layer
    from ``first_lora_layer`` up, and chunk pruning at 0.5 when the recipe teaches the chunk gate."""
    hs = cfg.hyper
    model = handle.model
    return HyperConfig.for_model(model, base_model_id=handle.spec, base_content_hash=handle.content_hash,
                                 layers=list(range(hs.first_lora_layer, model.config.num_hidden_layers)),
                                 min_gate=0.5 if hs.chunk_gate and cfg.gate_loss > 0 else 0.0,
                                 **hs.model_dump(exclude={"first_lora_layer"}))  # fmt: skip


@dataclass
class Setup:
    """What training does not change: the frozen base model (with row-LoRA hooks), the network's shape, the data."""

    cfg: TrainConfig
    run_dir: Path
    device: str
    handle: Any
    hc: HyperConfig
    lora: RowLora
    eval_docs: list[synth.Doc]
    train_c: list[CachedDoc]
    eval_c: list[CachedDoc]
    hay_c: list[CachedDoc]

    @property
    def model(self) -> Any:
        return self.handle.model

    @property
    def tok(self) -> Any:
        return self.handle.tokenizer


def setup(cfg: TrainConfig, run_dir: Path, *, device: str | None, threads: int | None, command: str,
          handle: Any) -> Setup:  # fmt: skip
    """Seed, load the base model (unless ``handle``), record the config and build or load the cached data."""
    from agent_sleep.models.loader import load_base_model

    torch.set_num_threads(threads or cfg.threads)
    torch.manual_seed(cfg.seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run_dir = Path(run_dir)
    (run_dir / "ckpt").mkdir(parents=True, exist_ok=True)
    handle = handle or load_base_model(cfg.model, device=device, dtype=torch.float32)
    model, tok = handle.model, handle.tokenizer
    model.requires_grad_(False)
    hc = hyper_config(cfg, handle)
    (run_dir / "config.json").write_text(json.dumps({"train": cfg.model_dump(mode="json"), "command": command},
                                                    indent=2))  # fmt: skip

    d, hs = cfg.data, cfg.hyper
    train_docs, eval_docs = make_docs(d, cfg.seed)
    key = cache_key(model=handle.content_hash, data=d.model_dump(mode="json"), seed=cfg.seed,
                    enc=hs.encoder_layers, first=hs.first_lora_layer,
                    **({"written": [x["id"] for x in train_docs + eval_docs if x.get("kind") == "written"]}
                       if d.written_dirs or d.eval_written else {}))  # fmt: skip
    common = {"encoder_layers": hs.encoder_layers, "first_lora_layer": hs.first_lora_layer,
              "max_doc_tokens": d.max_doc_tokens, "device": device}  # fmt: skip
    qa_keys = ("qa", "probe_qa") if d.use_probe_qa else ("qa",)
    train_c = build_cache(model, tok, train_docs, path=run_dir / "cache" / f"train-{key}.pt", qa_keys=qa_keys,
                          desc="cache train", prompt_styles=d.prompt_styles, **common)  # fmt: skip
    eval_c = build_cache(model, tok, eval_docs, path=run_dir / "cache" / f"eval-{key}.pt", desc="cache eval",
                         **common)  # fmt: skip
    if cfg.address_loss:
        found = attach_answer_positions(train_c, train_docs, tok, qa_keys=qa_keys, max_doc_tokens=d.max_doc_tokens)
        print(f"address_loss: {found} of {sum(len(c['qa']) for c in train_c)} training questions have their answer "
              "verbatim in the document")
    folder = Path(cfg.cd_cache) if cfg.cd_cache else run_dir / "teacher"
    if cfg.cd_loss and cfg.cd_target == "gold":
        attach_teacher(train_c, train_docs, handle, qa_keys=qa_keys, top_k=cfg.cd_top_k,
                       max_doc_tokens=d.max_doc_tokens, device=device, folder=folder)  # fmt: skip
    elif cfg.cd_loss:
        common_gen = {"top_k": cfg.cd_top_k, "max_doc_tokens": d.max_doc_tokens, "device": device, "folder": folder,
                      "max_new_tokens": cfg.cd_max_new_tokens, "first_lora_layer": hs.first_lora_layer,
                      "cut": None if cfg.cd_cut == "none" else cfg.cd_cut}  # fmt: skip
        stats = {"train": attach_generated(train_c, train_docs, handle, qa_keys=qa_keys,
                                           only_correct=cfg.cd_only_correct, **common_gen),
                 "eval": attach_generated(eval_c, eval_docs, handle, qa_keys=("qa",), only_correct=False,
                                          **common_gen)}  # fmt: skip
        (run_dir / "teacher_stats.json").write_text(json.dumps(stats, indent=2))
    hay_c: list[CachedDoc] = []
    if d.n_hay:
        hay_docs = (haystacks.make_filler_docs(d.n_hay, cfg.seed, d.hay_styles, tuple(d.hay_sentences)) if d.hay_styles
                    else synth.make_hay_docs(d.n_hay, cfg.seed, tuple(d.hay_sentences)))  # fmt: skip
        hay_key = cache_key(key=key, n=d.n_hay, sentences=d.hay_sentences)
        hay_c = build_cache(model, tok, hay_docs, path=run_dir / "cache" / f"hay-{hay_key}.pt", desc="cache hay",
                            **common)  # fmt: skip
    return Setup(cfg=cfg, run_dir=run_dir, device=device, handle=handle, hc=hc,
                 lora=RowLora(model, hc.module_names()), eval_docs=eval_docs, train_c=train_c, eval_c=eval_c,
                 hay_c=hay_c)  # fmt: skip


def attach_teacher(cached: list[CachedDoc], docs: list[synth.Doc], handle: Any, *, qa_keys: tuple[str, ...],
                   top_k: int, max_doc_tokens: int, device: str, folder: Path) -> None:  # fmt: skip
    """Give every cached question of ``docs`` its ``teacher`` top-k (computed once, kept in ``folder``)."""
    from pipelines.d2l.teacher import build_teacher_cache

    teachers = build_teacher_cache(handle.model, handle.tokenizer, docs, model_hash=handle.content_hash,
                                   folder=folder, top_k=top_k, qa_keys=qa_keys, max_doc_tokens=max_doc_tokens,
                                   device=device, desc="teacher top-k")  # fmt: skip
    for doc, entries in zip(cached, teachers, strict=True):
        for qa, teacher in zip(doc["qa"], entries, strict=True):
            if teacher["logp"].shape[0] != len(qa["ids"]) - qa["n_prompt"]:
                raise ValueError(f"document {doc['id']}: the teacher's answer tokens differ from the student's")
            qa["teacher"] = teacher


def attach_generated(cached: list[CachedDoc], docs: list[synth.Doc], handle: Any, *, qa_keys: tuple[str, ...],
                     top_k: int, max_doc_tokens: int, device: str, folder: Path, max_new_tokens: int,
                     first_lora_layer: int, only_correct: bool, cut: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Give every cached question of ``docs`` a ``cd`` row: the teacher's own greedy answer (computed once, kept in
    ``folder``; ``cut``: :func:`pipelines.d2l.teacher.build_teacher_cache`'s cut rule) after the question-only
    prompt, its hidden states entering the first LoRA layer and its ``teacher`` top-k; None (gold answer, CE only)
    where ``only_correct`` and the teacher's answer misses the gold one.
    Returns the teacher's answer statistics (share matching the gold answer, mean length, share that stopped)."""
    from agent_sleep.evaluation.answers import answer_matches
    from agent_sleep.generators.prompts import question_prompt
    from pipelines.d2l.data import _hidden
    from pipelines.d2l.teacher import build_teacher_cache, stop_ids

    tok = handle.tokenizer
    teachers = build_teacher_cache(handle.model, tok, docs, model_hash=handle.content_hash, folder=folder,
                                   top_k=top_k, qa_keys=qa_keys, max_doc_tokens=max_doc_tokens, device=device,
                                   desc="teacher answers", mode="generated", max_new_tokens=max_new_tokens,
                                   cut=cut)  # fmt: skip
    stop = stop_ids(tok)
    todo: list[tuple[dict[str, Any], dict[str, Any], Tensor, int]] = []
    n = hits = stopped = length = 0
    for doc, entries in zip(cached, teachers, strict=True):
        for qa, teacher in zip(doc["qa"], entries, strict=True):
            n += 1
            match = answer_matches(teacher["text"], qa["answer"])
            hits += match
            length += len(teacher["ids"])
            stopped += bool(len(teacher["ids"])) and int(teacher["ids"][-1]) in stop
            if only_correct and not match:
                qa["cd"] = None
                continue
            prompt = tok(question_prompt(tok, qa["question"]), add_special_tokens=False)["input_ids"]
            ids = torch.tensor(list(prompt) + teacher["ids"].tolist())
            todo.append((qa, teacher, ids, len(prompt)))
    hidden = _hidden(handle.model, [ids for _, _, ids, _ in todo], first_lora_layer, device, 32) if todo else []
    for (qa, teacher, ids, n_prompt), h in zip(todo, hidden, strict=True):
        qa["cd"] = {"ids": ids, "n_prompt": n_prompt, "hidden": h, "answer": teacher["text"],
                    "teacher": {"logp": teacher["logp"], "idx": teacher["idx"]}}  # fmt: skip
    return {"questions": n, "teacher_match": hits / max(1, n), "mean_tokens": length / max(1, n),
            "stopped": stopped / max(1, n), "distilled": len(todo)}  # fmt: skip


def _cd_rows(s: Setup, docs: list[CachedDoc]) -> list[tuple[int, dict[str, Any]]]:
    """The generated-mode distillation rows of ``docs`` (questions the teacher answered)."""
    return [(i, qa["cd"]) for i, doc in enumerate(docs) for qa in doc["qa"] if qa.get("cd")]


def in_context_baseline(s: Setup) -> dict[str, Any]:
    """The base model on the held-out questions: CE and accuracy without the document, accuracy with it in context.

    Computed once per run dir (``baseline.json``); a resumed run reads it back.
    """
    base_file = s.run_dir / "baseline.json"
    if base_file.exists():
        return json.loads(base_file.read_text())
    cfg = s.cfg
    rows = [(i, qa) for i, doc in enumerate(s.eval_c) for qa in doc["qa"]]
    with torch.no_grad():
        ce_base = per_doc_mean(qa_loss(s.model, s.lora, s.hc, None, rows, s.device), rows).item()
    acc_base, _ = greedy_accuracy(s.model, s.tok, s.lora, s.hc, s.eval_docs, None, s.device, cfg.eval_max_new_tokens)
    # With the document in context the base model often answers in a full sentence ("The magic number of X
    # is 4721."), so it gets more tokens than the adapter conditions (24 mixed held-out documents: 14.6 %
    # with 12 new tokens, 56.2 % with 32).
    acc_doc, _ = greedy_accuracy(s.model, s.tok, s.lora, s.hc, s.eval_docs, None, s.device,
                                 max(32, cfg.eval_max_new_tokens), True)  # fmt: skip
    baseline = {"eval_ce_base": ce_base, "acc_base": acc_base, "acc_with_doc": acc_doc, "n_eval_questions": len(rows)}
    cd_rows = _cd_rows(s, s.eval_c) if cfg.cd_loss and cfg.cd_target == "generated" else []
    if cd_rows:
        with torch.no_grad():
            kl, _ = cd_loss(s.model, s.lora, s.hc, None, cd_rows, s.device)
        baseline["eval_kl_base"] = per_doc_mean(kl, cd_rows).item()  # the base model without the document
    base_file.write_text(json.dumps(baseline, indent=2))
    return baseline


# ---------------------------------------------------------------- state, checkpoints, signals


@dataclass
class TrainState:
    """What training changes, and what ``ckpt/last.pt`` holds: the network, its optimiser and schedule, progress."""

    net: HyperNet
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    step: int = 0
    best: float = -1.0  # best held-out accuracy so far (-1: none evaluated)
    trained_s: float = 0.0  # seconds spent in training steps, over every resume


def fresh_state(s: Setup) -> TrainState:
    """A new network (feature statistics of the training documents), AdamW and warmup + cosine schedule."""
    cfg = s.cfg
    net = HyperNet(s.hc)
    net.set_feature_stats(torch.cat([d["feats"] for d in s.train_c]))  # overwritten by a resumed state
    net.to(s.device)
    opt = torch.optim.AdamW(_param_groups(net, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(step, cfg))
    return TrainState(net, opt, sched)


def _param_groups(net: HyperNet, cfg: TrainConfig) -> list[dict[str, Any]]:
    """One group at ``cfg.lr``, or two when ``induction_more_lr`` scales the higher-order induction maps (the
    schedule multiplies each group's own rate)."""
    more = [p for lin in getattr(net, "ptr_a_more", []) for p in lin.parameters()]
    if cfg.induction_more_lr == 1.0 or not more:
        return [{"params": list(net.parameters())}]
    ids = {id(p) for p in more}
    rest = [p for p in net.parameters() if id(p) not in ids]
    return [{"params": rest}, {"params": more, "lr": cfg.lr * cfg.induction_more_lr}]


def _last_path(run_dir: Path) -> Path:
    return run_dir / "ckpt" / "last.pt"


@torch.no_grad()
def grow_rank(net: HyperNet, source: Path, content_hash: str, seed: int = 0) -> None:
    """Load checkpoint ``source`` (rank r) into ``net`` (rank R > r, otherwise the same shape): every (layer, rank)
    tensor keeps the checkpoint's values in its first r ranks; a new rank's query is a copy of a sibling slot's
    query plus small noise, its A scale and induction gain 1, its B scale 0 (and the bias block's new B columns
    0), so the grown network emits exactly the checkpoint's adapter until training moves the new scales."""
    from agent_sleep.generators.checkpoint import load_checkpoint

    src = load_checkpoint(source, content_hash=content_hash)
    old, new = src.config.rank, net.config.rank
    if new <= old:
        raise ValueError(f"grow_rank: the network's rank {new} must exceed the checkpoint's {old}")
    n_layers = len(net.config.layers)
    g = torch.Generator().manual_seed(seed)
    state = net.state_dict()
    for name, theirs in src.state_dict().items():
        mine = state[name]
        if mine.shape == theirs.shape:
            mine.copy_(theirs)
        elif name == "queries":
            q_old, q_new = theirs.view(n_layers, old, -1), mine.view(n_layers, new, -1)
            q_new[:, :old] = q_old
            pick = torch.randint(0, old, (new - old,), generator=g)
            q_new[:, old:] = q_old[:, pick] + 0.02 * torch.randn(q_new[:, old:].shape, generator=g)
        elif name in ("scale_A", "ind_gain"):
            mine.fill_(1.0)
            mine[:, :old] = theirs
        elif name == "scale_B":
            mine.zero_()
            mine[:, :old] = theirs
        elif name == "bias_A":
            mine[:, :old] = theirs  # new rows keep their random init; their B columns are zero
        elif name == "bias_B":
            mine.zero_()
            mine[..., :old] = theirs
        else:
            raise ValueError(f"grow_rank: {name} {tuple(theirs.shape)} -> {tuple(mine.shape)} has no rank rule")
    net.load_state_dict(state)


def _warm_start(net: HyperNet, source: Path, content_hash: str) -> None:
    """Copy the weights of checkpoint ``source`` into ``net``, growing a lower rank or induction order exactly;
    a network reading its features at another depth (``encoder_layers``) keeps the weights and its own feature
    statistics (set from this run's documents before the warm start); ConfigError if its shape differs otherwise."""
    from agent_sleep.errors import ConfigError
    from agent_sleep.generators.checkpoint import load_checkpoint

    src = load_checkpoint(source, content_hash=content_hash)
    # a fresh network's start; the generator's default pruning; the depth the features are read at (same width:
    # the weights carry over, the feature statistics stay this run's, see below)
    ignore = {"scale_B_init", "min_gate", "encoder_layers"}
    mine, theirs = net.config.model_dump(exclude=ignore), src.config.model_dump(exclude=ignore)
    diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    # a higher induction order or rank may grow from the checkpoint, keeping its function exactly
    higher = {"induction_order": 1, "rank": 8}
    grown = bool(diff) and all(k in higher and mine[k] > theirs.get(k, higher[k]) for k in diff)
    if diff and not grown:
        raise ConfigError(f"init_from {source}: the checkpoint's {diff} differ from this recipe's hyper settings")
    deeper = src.config.encoder_layers != net.config.encoder_layers
    stats = {k: v.clone() for k, v in net.state_dict().items() if k in ("feat_mean", "feat_std")}
    if "rank" in diff:
        grow_rank(net, source, content_hash)  # new slots start with a zero B scale (see grow_rank)
    else:
        # a higher induction order adds maps that start at zero (HyperNet): the checkpoint's function, exactly
        missing, unexpected = net.load_state_dict(src.state_dict(), strict=not grown)
        if unexpected or any(not k.startswith("ptr_a_more.") for k in missing):
            raise ConfigError(f"init_from {source}: weights do not fit ({missing or unexpected})")
    if deeper and stats:  # features read at another depth: standardise them with their own statistics
        net.load_state_dict(stats, strict=False)


def resume(state: TrainState, s: Setup) -> None:
    """Continue from the run's ``ckpt/last.pt`` if there is one, else warm-start from ``init_from`` if set."""
    last = _last_path(s.run_dir)
    if s.cfg.init_from and not last.exists():
        _warm_start(state.net, Path(s.cfg.init_from), s.handle.content_hash)
    if last.exists():
        saved = torch.load(last, weights_only=False)
        state.net.load_state_dict(saved["net"])
        state.opt.load_state_dict(saved["opt"])
        state.sched.load_state_dict(saved["sched"])
        state.step, state.best, state.trained_s = saved["step"], saved["best"], saved.get("trained_s", 0.0)


def save_last(state: TrainState, s: Setup) -> None:
    """Write ``ckpt/last.pt`` atomically (a kill mid-write leaves the previous one)."""
    last = _last_path(s.run_dir)
    tmp = last.with_suffix(f".tmp{os.getpid()}")
    torch.save({"net": state.net.state_dict(), "opt": state.opt.state_dict(), "sched": state.sched.state_dict(),
                "step": state.step, "best": state.best, "trained_s": state.trained_s,
                "hyper": s.hc.model_dump(mode="json")}, tmp)  # fmt: skip
    os.replace(tmp, last)


def save_best(state: TrainState, s: Setup, rec: dict[str, Any], baseline: dict[str, Any], command: str) -> None:
    """Write ``ckpt/best`` (a loadable D2L checkpoint) with the eval record ``rec`` that made it the best."""
    save_checkpoint(state.net, s.run_dir / "ckpt" / "best", version=f"step{state.step}", overwrite=True,
                    extra={"training": {"step": state.step, "minutes": state.trained_s / 60, "command": command,
                                        "eval": {k: rec[k] for k in ("acc", "eval_ce", *baseline)},
                                        "config": s.cfg.model_dump(mode="json")}})  # fmt: skip


# ---------------------------------------------------------------- eval and step


def evaluate(s: Setup, state: TrainState, baseline: dict[str, Any]) -> dict[str, Any]:
    """The ``eval`` record of ``metrics.jsonl``: held-out CE and accuracy through each document's adapter, with
    another document's adapter (document dependence) and, for multi-chunk recipes, with 3 documents in one."""
    cfg, net, hc, eval_c, hay_c = s.cfg, state.net, s.hc, s.eval_c, s.hay_c
    model, tok, lora, device, eval_docs = s.model, s.tok, s.lora, s.device, s.eval_docs
    net.eval()
    with torch.no_grad():
        ab = doc_loras(net, eval_c, device)
        rows = [(i, qa) for i, doc in enumerate(eval_c) for qa in doc["qa"]]
        ce = per_doc_mean(qa_loss(model, lora, hc, ab, rows, device), rows).item()
        acc, answers = greedy_accuracy(model, tok, lora, hc, eval_docs, ab, device, cfg.eval_max_new_tokens)
        # document dependence: every document's questions asked with the next document's adapter
        shifted = [(i + 1) % len(eval_docs) for i in range(len(eval_docs))]
        acc_shuffled, _ = greedy_accuracy(model, tok, lora, hc, eval_docs, ab, device, cfg.eval_max_new_tokens,
                                          adapter_of=shifted)  # fmt: skip
        extra: dict[str, Any] = {"acc_shuffled": acc_shuffled}
        cd_rows = _cd_rows(s, eval_c) if cfg.cd_loss and cfg.cd_target == "generated" else []
        if cd_rows:  # top-k KL towards the teacher's own answers on the held-out documents
            kl, ce_t = cd_loss(model, lora, hc, ab, cd_rows, device)
            extra["eval_kl"] = per_doc_mean(kl, cd_rows).item()
            extra["eval_ce_teacher"] = per_doc_mean(ce_t, cd_rows).item()
        if len(cfg.data.chunk_probs) > 1 or hay_c:
            # multi-chunk: 3 documents (+ 1 filler chunk when there are any) concatenated into one adapter
            groups = [list(range(i, min(i + 3, len(eval_c)))) for i in range(0, len(eval_c), 3)]
            members = list(eval_c) + hay_c[: len(groups)] if hay_c else list(eval_c)
            if hay_c:
                groups = [g + [len(eval_c) + gi] for gi, g in enumerate(groups)]
            out = chunk_loras(net, members, device)
            ab3 = group_loras(net, out.a, out.b, groups)
            if out.gate is not None and hay_c:
                extra["gate_fact"] = out.gate[: len(eval_c)].mean().item()
                extra["gate_filler"] = out.gate[len(eval_c) :].mean().item()
            of = [gi for gi, g in enumerate(groups) for m in g if m < len(eval_c)]
            extra["acc_k3"], _ = greedy_accuracy(model, tok, lora, hc, eval_docs, ab3, device,
                                                 cfg.eval_max_new_tokens, adapter_of=of)  # fmt: skip
    net.train()
    return {"kind": "eval", "step": state.step, "eval_ce": ce, "acc": acc, **extra, **baseline,
            "minutes": state.trained_s / 60, "samples": answers[:6]}  # fmt: skip


@dataclass
class StepResult:
    ce: Tensor  # answer-token CE, per-document mean
    reg: Tensor  # L1 penalty on the generated A, B
    grad_norm: float  # before clipping
    # the further terms the recipe weighs, by name (logged as their mean over a log window): cd_kl (the
    # context-distillation KL, per-document mean; cd_loss), pointer_loss and gate_loss (pointer_loss / gate_loss),
    # pointer_entropy (pointer_sharp), key_overlap (key_distinct), address (address_loss)
    terms: dict[str, float] = field(default_factory=dict)


def train_step(s: Setup, state: TrainState) -> StepResult:
    """One optimiser step on batch ``state.step`` (documents grouped into adapters, hay chunks mixed in); the caller
    advances ``state.step``. FloatingPointError on a non-finite loss, before the weights change."""
    cfg, net, hc, train_c, hay_c, device = s.cfg, state.net, s.hc, s.train_c, s.hay_c, s.device
    picked = _batch(state.step, cfg, len(train_c))
    docs = [train_c[i] for i, _ in picked]
    groups = _groups(state.step, cfg, len(docs), len(hay_c))
    group_of = {m: gi for gi, g in enumerate(groups) for m in g if m < len(docs)}
    rows, adapter_rows = [], []
    for j, (_, slot) in enumerate(picked):
        qas = docs[j]["qa"]
        chosen = random.Random(f"{cfg.seed}:{slot}").sample(qas, min(cfg.qas_per_doc, len(qas)))
        if cfg.cd_loss and cfg.cd_target == "generated":  # the teacher's own answer (None: the gold one, CE only)
            chosen = [qa["cd"] or qa for qa in chosen]
        rows += [(j, qa) for qa in chosen]
        adapter_rows += [(group_of[j], qa) for qa in chosen]
    hays = sorted({m for g in groups for m in g if m >= len(docs)})
    chunks = docs + [hay_c[m - len(docs)] for m in hays]
    out = chunk_loras(net, chunks, device, position_keys=bool(cfg.key_distinct))
    remap = {m: len(docs) + h for h, m in enumerate(hays)}
    drop_rng = random.Random(f"{cfg.seed}:bias:{state.step}")
    dropped = [gi for gi in range(len(groups)) if cfg.bias_drop and drop_rng.random() < cfg.bias_drop]
    ab = group_loras(net, out.a, out.b, [[remap.get(m, m) for m in g] for g in groups], without_bias=dropped)
    kl = None
    with capture_inputs(s.model, hc.module_names() if cfg.address_loss else []) as captured:
        if cfg.cd_loss:
            kl_rows, ce_rows = cd_loss(s.model, s.lora, hc, ab, adapter_rows, device)
            kl, ce = per_doc_mean(kl_rows, rows), per_doc_mean(ce_rows, rows)
        else:
            ce = per_doc_mean(qa_loss(s.model, s.lora, hc, ab, adapter_rows, device), rows)
    reg = cfg.l1 * (out.a.abs().mean() + out.b.abs().mean())
    loss = (ce if cfg.ce_weight == 1.0 else cfg.ce_weight * ce) + reg
    if kl is not None:
        loss = loss + cfg.cd_loss * kl
    terms: dict[str, float] = {} if kl is None else {"cd_kl": kl.item()}
    if cfg.pointer_loss or cfg.gate_loss:
        ptr_l, gate_l = aux_losses(out, chunks, len(docs))
        loss = loss + cfg.pointer_loss * ptr_l + cfg.gate_loss * gate_l
        terms |= {"pointer_loss": ptr_l.item(), "gate_loss": gate_l.item()}
    for name, weight, term in (
        ("pointer_entropy", cfg.pointer_sharp, lambda: pointer_entropy(out, chunks, len(docs))),
        ("key_overlap", cfg.key_distinct,
         lambda: key_overlap(out, chunks, len(docs), nearest=cfg.key_distinct_nearest)),
        ("address", cfg.address_loss,
         lambda: address_loss(out, captured, rows, [[remap.get(m, m) for m in groups[group_of[j]]] for j, _ in rows],
                              tau=cfg.address_tau)),
    ):
        if weight:
            value = term()
            loss = loss + weight * value
            terms[name] = value.item()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss at step {state.step}; last checkpoint kept")
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip).item()
    state.opt.step()
    state.sched.step()
    return StepResult(ce, reg, gnorm, terms)


# ---------------------------------------------------------------- the loop


def run_steps(s: Setup, state: TrainState, baseline: dict[str, Any], stop: StopSignals, *,
              max_minutes: float | None, command: str) -> None:  # fmt: skip
    """Train until ``cfg.steps``, a stop signal or ``max_minutes`` of training (:func:`pipelines.training.run_loop`);
    log to ``metrics.jsonl``, evaluate (keeping ``ckpt/best``) and write ``ckpt/last.pt`` on the recipe's
    schedules."""
    cfg = s.cfg
    metrics = s.run_dir / "metrics.jsonl"

    def one_step() -> StepLog:
        res = train_step(s, state)
        last = {"reg": res.reg.item(), "grad_norm": res.grad_norm, "lr": state.sched.get_last_lr()[0]}
        return StepLog(res.ce.item(), res.terms, last)

    def evaluate_now(bar: Any) -> None:
        rec = evaluate(s, state, baseline)
        append_jsonl(metrics, rec)
        k3 = f", 3 docs in one adapter {rec['acc_k3']:.3f}" if "acc_k3" in rec else ""
        if "eval_kl" in rec:
            k3 += f"; KL to teacher {rec['eval_kl']:.3f} (base {baseline.get('eval_kl_base', float('nan')):.3f})"
        bar.write(f"step {state.step}: held-out acc {rec['acc']:.3f} (another doc's adapter "
                  f"{rec['acc_shuffled']:.3f}{k3}; base {baseline['acc_base']:.3f}, with doc "
                  f"{baseline['acc_with_doc']:.3f}) CE {rec['eval_ce']:.3f} (base {baseline['eval_ce_base']:.3f})")
        if rec["acc"] > state.best:
            state.best = rec["acc"]
            save_best(state, s, rec, baseline, command)
        plot_metrics(metrics, s.run_dir / "metrics.png")

    state.net.train()
    run_loop(state, steps=cfg.steps, log_every=cfg.log_every, eval_every=cfg.eval_every, ckpt_every=cfg.ckpt_every,
             metrics=metrics, stop=stop, max_minutes=max_minutes, one_step=one_step, evaluate=evaluate_now,
             checkpoint=lambda: save_last(state, s), desc="d2l meta-train")  # fmt: skip


def train(cfg: TrainConfig, run_dir: Path, *, device: str | None = None, max_minutes: float | None = None,
          threads: int | None = None, command: str = "", handle: Any = None) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) meta-training in ``run_dir``; returns a summary dict. ``handle``: a preloaded base model.

    ``ckpt/last.pt`` is written however the loop ends (steps done, ``max_minutes``, SIGTERM/SIGINT, an error).
    """
    s = setup(cfg, run_dir, device=device, threads=threads, command=command, handle=handle)
    try:
        baseline = in_context_baseline(s)
        state = fresh_state(s)
        resume(state, s)
        with StopSignals() as stop:
            try:
                run_steps(s, state, baseline, stop, command=command, max_minutes=max_minutes)
            finally:
                save_last(state, s)
    finally:
        s.lora.remove()
    metrics = s.run_dir / "metrics.jsonl"
    if metrics.exists():
        plot_metrics(metrics, s.run_dir / "metrics.png")
    return {"step": state.step, "best_acc": state.best, "minutes": state.trained_s / 60, "stopped": stop.requested,
            **baseline}  # fmt: skip
