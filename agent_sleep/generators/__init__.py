"""Generators: turn what the agent met (documents, skills) into LoRA adapters.

Each is a :class:`~agent_sleep.interfaces.Generator` (``generate`` a request, ``write``
a PEFT folder), found by name through :mod:`agent_sleep.generators.registry`:
``d2l`` (Doc-to-LoRA: a trained hypernetwork maps a document to an adapter in one
forward pass; :mod:`agent_sleep.generators.d2l`), ``t2l`` (Text-to-LoRA: one maps a skill
description to an adapter; :mod:`agent_sleep.generators.t2l`), ``gradient_cd`` (gradient
context distillation, the baseline; :mod:`agent_sleep.generators.gradient_cd`) and ``sft``
(gradient LoRA on conversations, loss on the assistant's tokens; :mod:`agent_sleep.generators.sft`),
the last two sharing one budgeted training loop (:mod:`agent_sleep.generators.lora_training`).
Torch is imported only by the submodules, so importing this package stays light.
"""
