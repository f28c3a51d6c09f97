"""Generators: turn what the agent met (documents, skills) into LoRA adapters.

``d2l`` (Doc-to-LoRA): a trained hypernetwork maps a document to an adapter in
one forward pass; see :mod:`agent_sleep.generators.d2l`. Torch is imported only
by the submodules, so importing this package stays light.
"""
