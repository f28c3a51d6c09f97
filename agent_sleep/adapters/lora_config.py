"""PEFT ``adapter_config.json`` semantics for plain LoRA, without importing peft.

Builds complete configs that ``PeftModel.from_pretrained`` and vLLM load
unchanged, refuses the options our hook runtime cannot reproduce, parses
PEFT state-dict keys into per-module (A, B) pairs, and computes each module's
scaling exactly as PEFT 0.21 does (``lora_alpha / r``, ``/ sqrt(r)`` with
``use_rslora``, overridden per module by ``rank_pattern`` / ``alpha_pattern``).

It deliberately does not read or write files; see
:mod:`agent_sleep.adapters.artifact`.
"""

from __future__ import annotations

import enum
import importlib.metadata
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_sleep.errors import AdapterFormatError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["check_lora_config", "complete_lora_config", "lora_pairs", "module_scaling", "peft_lora_config", "peft_key"]

_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<half>[AB])\.weight")
_PREFIX = "base_model.model."
# Recognisable keys of LoRA variants we refuse, named in the error.
_STRAY = (("lora_magnitude_vector", "a DoRA magnitude"), ("lora_embedding", "embedding LoRA"),
          ("modules_to_save", "a modules_to_save copy"), (".bias", "a LoRA bias"))

# Keys of a LoraConfig.to_dict() that a loader may look at; anything else given is kept as is.
_DEFAULTS: dict[str, Any] = {
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "auto_mapping": None,
    "base_model_name_or_path": None,
    "revision": None,
    "inference_mode": True,
    "r": 8,
    "lora_alpha": 8,
    "target_modules": [],
    "exclude_modules": None,
    "lora_dropout": 0.0,
    "fan_in_fan_out": False,
    "bias": "none",
    "use_rslora": False,
    "modules_to_save": None,
    "init_lora_weights": True,
    "layers_to_transform": None,
    "layers_pattern": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "use_dora": False,
    "lora_bias": False,
    "target_parameters": None,
    "layer_replication": None,
    "trainable_token_indices": None,
    "alora_invocation_tokens": None,
    "use_qalora": False,
}

# (option, why it is refused). Each one changes the forward pass or the base weights in a way
# that adding scaling * B @ A to a linear layer's output does not reproduce.
_REFUSED = {
    "use_dora": "DoRA rescales the whole weight, not just adds a low-rank delta",
    "modules_to_save": "it replaces whole modules (full copies of their weights)",
    "lora_bias": "it trains a bias on lora_B",
    "target_parameters": "it applies LoRA to raw parameters (e.g. MoE experts), not linear layers",
    "layer_replication": "it duplicates layers of the base model",
    "trainable_token_indices": "it trains embedding rows",
    "alora_invocation_tokens": "activated LoRA switches on mid-sequence",
    "use_qalora": "QA-LoRA pools inputs for quantised bases",
    "use_bdlora": "block-diagonal LoRA shares weights across shards",
    "arrow_config": "Arrow routes between adapters per token",
    "kasa_config": "it is not a plain additive LoRA variant",
    "velora_config": "it is not a plain additive LoRA variant",
    "monteclora_config": "it is not a plain additive LoRA variant",
}


def _plain(value: Any) -> Any:
    """JSON-ready copy: enums to values, sets/tuples to (sorted) lists."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_lora_config(config: Mapping[str, Any], *, where: Path | str) -> None:
    """Raise AdapterFormatError (naming ``where`` and the option) unless ``config`` is plain LoRA."""
    peft_type = _plain(config.get("peft_type"))
    if peft_type != "LORA":
        raise AdapterFormatError(f"{where}: peft_type {peft_type!r} is not supported; only LORA adapters are")
    for option, why in _REFUSED.items():
        if config.get(option):
            raise AdapterFormatError(f"{where}: {option}={config[option]!r} is not supported ({why})")
    bias = config.get("bias", "none")
    if bias != "none":
        raise AdapterFormatError(f"{where}: bias={bias!r} is not supported; only bias='none' adapters are")
    init = config.get("init_lora_weights", True)
    if not isinstance(init, bool) and init != "gaussian":
        raise AdapterFormatError(
            f"{where}: init_lora_weights={init!r} is not supported (it rewrites the base weights when loaded)"
        )
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise AdapterFormatError(f"{where}: r must be a positive integer, got {r!r}")
    if not _is_number(config.get("lora_alpha")):
        raise AdapterFormatError(f"{where}: lora_alpha must be a finite number, got {config.get('lora_alpha')!r}")
    targets = config.get("target_modules")
    if not targets or not (isinstance(targets, str) or all(isinstance(t, str) for t in targets)):
        raise AdapterFormatError(f"{where}: target_modules must be a non-empty list of names or a regex string")
    for key, check in (("rank_pattern", lambda v: isinstance(v, int) and v >= 1), ("alpha_pattern", _is_number)):
        pattern = config.get(key) or {}
        if not isinstance(pattern, Mapping) or not all(check(v) for v in pattern.values()):
            raise AdapterFormatError(f"{where}: {key} must map module patterns to positive numbers")


def complete_lora_config(lora_config: Mapping[str, Any], *, base_model_id: str | None = None) -> dict[str, Any]:
    """A full PEFT LoRA config: PEFT's defaults, overridden by ``lora_config`` (which needs r, alpha, targets)."""
    given = _plain(dict(lora_config))
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in given]
    if missing:
        raise AdapterFormatError(f"lora_config lacks {', '.join(missing)}")
    config = {**_DEFAULTS, **given}
    if not isinstance(config["target_modules"], str):
        config["target_modules"] = sorted(set(config["target_modules"]))
    check_lora_config(config, where="lora_config")
    # How the weights were initialised no longer matters once they exist; True is what loaders expect.
    config["init_lora_weights"] = True
    config["inference_mode"] = True
    if config.get("base_model_name_or_path") is None:
        config["base_model_name_or_path"] = base_model_id
    if not config.get("peft_version"):
        try:
            config["peft_version"] = importlib.metadata.version("peft")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - peft is a dependency
            pass
    return config


def peft_lora_config(
    r: int, lora_alpha: float, target_modules: list[str] | str, **options: Any
) -> dict[str, Any]:
    """The minimal config :func:`complete_lora_config` (and so ``write_adapter``) completes."""
    return {"r": r, "lora_alpha": lora_alpha, "target_modules": target_modules, **options}


def peft_key(module: str, half: str) -> str:
    """PEFT's state-dict key for ``module``'s ``"A"`` or ``"B"`` matrix."""
    return f"{_PREFIX}{module}.lora_{half}.weight"


def _suffix_match(names: Any, module: str) -> bool:
    if isinstance(names, str):
        return re.fullmatch(names, module) is not None
    return any(module == n or module.endswith("." + n) for n in names or [])


def _targets(config: Mapping[str, Any], module: str) -> bool:
    """Whether PEFT would put a LoRA layer on ``module`` (peft.tuners.tuners_utils.check_target_module_exists)."""
    if config.get("exclude_modules") and _suffix_match(config["exclude_modules"], module):
        return False
    targets = config.get("target_modules")
    if isinstance(targets, str):
        return targets == "all-linear" or re.fullmatch(targets, module) is not None
    if not _suffix_match(targets, module):
        return False
    layers = config.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    patterns = config.get("layers_pattern")
    # The first numbered segment is the layer index (not, say, an MoE expert index after it).
    regexes = [rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\." for p in ([patterns] if isinstance(patterns, str) else patterns)] \
        if patterns else [r".*?\.[^.]*\.(?P<idx>\d+)\."]
    match = next((m for m in (re.match(r, module) for r in regexes) if m), None)
    if match is None:
        return False
    index = int(match["idx"])
    return index == layers if isinstance(layers, int) else index in layers


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    # Same rule as peft.utils.other.get_pattern_key: the first key matching a dotted suffix wins.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def module_scaling(config: Mapping[str, Any], module: str) -> float:
    """The factor PEFT multiplies ``B @ A`` by in ``module``."""
    try:
        r = _pattern_value(config.get("rank_pattern") or {}, module, config["r"])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
    except re.error as exc:
        raise AdapterFormatError(f"adapter config has an invalid rank/alpha pattern: {exc}") from exc
    return float(alpha) / (math.sqrt(r) if config.get("use_rslora") else r)


def lora_pairs(
    tensors: Mapping[str, Tensor], *, where: Path | str, config: Mapping[str, Any] | None = None
) -> dict[str, tuple[Tensor, Tensor]]:
    """Module path -> (A, B) from PEFT-style keys; AdapterFormatError for stray keys or bad shapes.

    With ``config``, each module must be one its ``target_modules`` selects and
    its rank must equal ``r`` (or the module's ``rank_pattern`` entry), or PEFT
    would load it differently from us.
    """
    halves: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        match = _KEY.fullmatch(key)
        if match is None:
            what = next((w for marker, w in _STRAY if marker in key), "an unexpected key")
            example = peft_key("model.layers.0.self_attn.q_proj", "A")
            raise AdapterFormatError(f"{where}: tensor {key!r} is {what}; expected keys like {example!r}")
        halves.setdefault(match["module"], {})[match["half"]] = value
    pairs: dict[str, tuple[Tensor, Tensor]] = {}
    for module, found in halves.items():
        if set(found) != {"A", "B"}:
            lacking = "B" if "A" in found else "A"
            raise AdapterFormatError(f"{where}: module {module} has no lora_{lacking} tensor")
        a, b = found["A"], found["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or a.shape[0] < 1:
            raise AdapterFormatError(
                f"{where}: module {module} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; "
                "expected [r, in] and [out, r]"
            )
        if config is not None:
            try:
                selected = _targets(config, module)
            except re.error as exc:
                raise AdapterFormatError(f"{where}: invalid regex in target/exclude/layer options: {exc}") from exc
            if not selected:
                raise AdapterFormatError(
                    f"{where}: module {module} has weights but target_modules={config.get('target_modules')!r} "
                    "does not select it (PEFT would ignore them)"
                )
            expected = _pattern_value(config.get("rank_pattern") or {}, module, config.get("r"))
            if a.shape[0] != expected:
                raise AdapterFormatError(
                    f"{where}: module {module} has rank {a.shape[0]} but the config says {expected}"
                )
        pairs[module] = (a, b)
    if not pairs:
        raise AdapterFormatError(f"{where}: the adapter has no LoRA tensors")
    return pairs
