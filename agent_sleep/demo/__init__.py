"""Demos that ship with the package, run by ``agent-sleep demo``.

Each module holds one agent or scenario as plain functions over an
:class:`~agent_sleep.store.ExperienceStore` and a chat model, so a demo can be
run from the CLI, from an example, or as one part of a longer scenario.
Importing this package imports nothing heavy; the modules load LangGraph and
the model when used.
"""
