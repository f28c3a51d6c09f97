"""Imports flow one way: a module imports from its own layer or lower ones, never a higher one.

The layers, lowest first (``LAYERS`` below is the one place they are written down)::

    foundation     _version, errors, config, config_files, fsutil, interfaces, names
    storage        store, models
    artifacts      capture, adapters
    registry       registry
    selection      selectors
    stages         generators, runtime, evaluation
    orchestration  consolidation, scheduling, reports, guard
    serving        serving
    entry points   cli, demo, and the package facade ``agent_sleep/__init__.py``

Choices made here:

* Every import counts: module level, inside functions (the lazy imports that keep
  ``import agent_sleep`` light are still dependencies), and under
  ``if TYPE_CHECKING:``. An annotation that names a higher layer's type still makes
  the lower layer's API depend on the higher one; move the type down (or describe
  it with a Protocol in ``interfaces.py``) instead.
* ``selectors`` sits just above the registry: selection reads the store and feeds
  the generators, so it must not reach up into them. ``evaluation`` sits with
  ``generators`` and ``runtime``: it runs the base model with candidate adapters
  (possibly through the runtime's chat model) and deploy may call its gate.
* ``scheduling`` (starts consolidation runs) and ``reports`` (read run records) sit
  just below ``serving``: they drive and read the stages, and a server may show them.
  ``guard`` (the online guard: live feedback after a deploy, automatic rollback) sits
  with them: it reads the store and writes the registry, and the scheduler calls it.
* The facade ``agent_sleep/__init__.py`` re-exports names from several layers, so it
  is an entry point: library modules never import ``agent_sleep`` itself (the
  version lives in ``agent_sleep/_version.py``).
* A new top-level module or package under ``agent_sleep/`` fails the test until it
  is given a layer here.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import agent_sleep

PACKAGE = "agent_sleep"
FACADE = "__init__"  # the key of agent_sleep/__init__.py in LAYERS

LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("foundation", frozenset({"_version", "errors", "config", "config_files", "fsutil", "interfaces", "key_terms",
                             "names"})),
    ("storage", frozenset({"store", "models"})),
    ("artifacts", frozenset({"capture", "adapters"})),
    ("registry", frozenset({"registry"})),
    ("selection", frozenset({"selectors"})),
    ("stages", frozenset({"generators", "runtime", "evaluation"})),
    ("orchestration", frozenset({"consolidation", "scheduling", "reports", "guard"})),
    ("serving", frozenset({"serving"})),
    ("entry points", frozenset({"cli", "demo", FACADE})),
)
RANK = {part: rank for rank, (_, parts) in enumerate(LAYERS) for part in parts}


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    imported: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: imports {self.imported}: {self.message}"


def _part(module: str) -> str | None:
    """The top-level part of ``agent_sleep`` a dotted module name belongs to (None: not ours)."""
    names = module.split(".")
    if names[0] != PACKAGE:
        return None
    return names[1] if len(names) > 1 else FACADE


def _layer(part: str) -> str:
    return LAYERS[RANK[part]][0]


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    names = list(rel.parts)
    if names[-1] == "__init__":
        names.pop()
    return ".".join(names)


def _imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, root: Path) -> list[str]:
    """Dotted names an import statement loads (``from pkg import sub`` counts as ``pkg.sub`` when sub is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    if _part(target) is None:
        return [target]
    folder = root.parent.joinpath(*target.split("."))
    out = []
    for alias in node.names:
        is_sub = (folder / alias.name).is_dir() or (folder / f"{alias.name}.py").is_file()
        out.append(f"{target}.{alias.name}" if is_sub else target)
    return out


def check_layers(root: Path) -> tuple[list[Violation], list[str]]:
    """(imports that go up a layer, top-level parts with no layer) for the package folder ``root``."""
    violations: list[Violation] = []
    unassigned: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        module = _module_name(root, path)
        own = _part(module)
        assert own is not None
        file = str(path.relative_to(root.parent))
        if own not in RANK:
            unassigned.add(own)
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=file)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for imported in _imported_modules(node, module, path.name == "__init__.py", root):
                part = _part(imported)
                if part is None or part == own:
                    continue
                if part not in RANK:
                    unassigned.add(part)
                elif RANK[part] > RANK[own]:
                    violations.append(Violation(file, node.lineno, imported,
                                                f"layer {_layer(own)!r} ({own}) must not import layer "
                                                f"{_layer(part)!r} ({part})"))
    return violations, sorted(unassigned)


def test_imports_flow_one_way() -> None:
    root = Path(agent_sleep.__file__).parent
    violations, unassigned = check_layers(root)
    problems = [str(v) for v in violations]
    problems += [f"agent_sleep/{p}: no layer assigned; add it to LAYERS in tests/test_layers.py" for p in unassigned]
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root


@pytest.mark.parametrize("source", [
    "from agent_sleep.runtime.live import LiveRuntime\n",
    "import agent_sleep.runtime.live\n",
    "from agent_sleep import runtime\n",
    "from agent_sleep import __version__\n",  # the facade is an entry point
    "def f():\n    from ..runtime import live\n",  # lazy and relative imports count
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent_sleep.serving.resolver import X\n",
])  # fmt: skip
def test_an_upward_import_is_reported_with_file_and_line(tmp_path: Path, source: str) -> None:
    root = _tree(tmp_path, {"__init__.py": "", "runtime/__init__.py": "", "runtime/live.py": "",
                            "serving/__init__.py": "", "serving/resolver.py": "",
                            "registry/__init__.py": "", "registry/refs.py": source})
    violations, unassigned = check_layers(root)
    assert unassigned == []
    assert len(violations) == 1
    v = violations[0]
    assert v.file == "agent_sleep/registry/refs.py" and v.line == source.count("\n")
    assert "layer 'registry' (registry) must not import" in v.message


def test_downward_and_same_layer_imports_pass(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "__init__.py": "from agent_sleep.cli import main\n",
        "cli/__init__.py": "", "cli/main.py": "from agent_sleep.serving import app\n",
        "serving/__init__.py": "", "serving/app.py": "from agent_sleep._version import __version__\n",
        "_version.py": "", "errors.py": "",
        "runtime/__init__.py": "from . import live\nfrom agent_sleep.generators import d2l\n",
        "runtime/live.py": "from .. import errors\n",
        "generators/__init__.py": "", "generators/d2l.py": "import agent_sleep.registry\n",
        "registry/__init__.py": "",
    })
    assert check_layers(root) == ([], [])


def test_a_package_without_a_layer_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"__init__.py": "", "errors.py": "from agent_sleep.newthing import x\n",
                            "newthing/__init__.py": "", "newthing/core.py": "from agent_sleep import errors\n"})
    assert check_layers(root) == ([], ["newthing"])
