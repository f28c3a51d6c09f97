"""Crash-safe writes: targets appear whole or not at all, and failures leave no temp litter."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent_sleep import fsutil
from agent_sleep.errors import AgentSleepError, PathExistsError
from agent_sleep.fsutil import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_file_writes_replace_the_target_whole(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    atomic_write_text(target, "gr\u00fc\u00df")
    assert target.read_bytes() == "gr\u00fc\u00df".encode()
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text(encoding="utf-8") == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    atomic_write_json(target, {"when": object}, indent=None, sort_keys=False, default=lambda o: "obj")
    assert json.loads(target.read_text()) == {"when": "obj"}
    assert os.listdir(tmp_path) == ["f.bin"]
    # Not mkstemp's 0600: a shared cache must stay readable by others.
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()


def test_failed_file_write_keeps_the_old_target_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sidecar.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})  # not serialisable: fails before anything is written
    blocker = tmp_path / "taken"
    (blocker / "inside").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(blocker, b"x")  # the temp file is complete, the rename fails
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["sidecar.json", "taken"]
    assert os.listdir(blocker) == ["inside"]


def test_failed_file_write_mid_flush_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsutil.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(tmp_path / "new.bin", b"data")
    assert os.listdir(tmp_path) == []


def test_folder_is_published_whole_with_files_synced_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "a" / "b" / "v1"
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else str(fd))
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", recording_fsync)
    with atomic_dir(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".v1.part-") and not dest.exists()
        (tmp / "w.bin").write_bytes(b"weights")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "c.json").write_text("{}")
    assert (dest / "w.bin").read_bytes() == b"weights" and (dest / "sub" / "c.json").read_text() == "{}"
    assert os.listdir(dest.parent) == ["v1"]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o777 & ~_umask()
    if os.path.exists("/proc/self/fd"):
        # Every file and the folder were flushed under the temp name, i.e. before the rename; then the parent.
        assert {Path(p).name for p in synced[:-1]} >= {"w.bin", "c.json", "sub", tmp.name}
        assert all(tmp.name in p for p in synced[:-1]) and synced[-1] == os.path.realpath(dest.parent)


def test_folder_failure_leaves_no_target_and_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "v1"
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_dir(dest) as tmp:
            (tmp / "w.bin").write_bytes(b"part")
            raise RuntimeError("half way")
    assert os.listdir(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(dest) as tmp:
            (tmp / "w.bin").write_bytes(b"part")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_existing_folder_is_refused_before_the_block_runs(tmp_path: Path) -> None:
    dest = tmp_path / "v1"
    dest.mkdir()
    (dest / "keep").write_text("old")
    entered = False
    with pytest.raises(PathExistsError, match="already exists") as info:
        with atomic_dir(dest):
            entered = True
    assert not entered
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, AgentSleepError)
    assert os.listdir(tmp_path) == ["v1"] and (dest / "keep").read_text() == "old"


def test_folder_created_concurrently_wins_and_temp_is_removed(tmp_path: Path) -> None:
    dest = tmp_path / "v1"
    with pytest.raises(PathExistsError, match="concurrently"):
        with atomic_dir(dest) as tmp:
            (tmp / "mine").write_text("mine")
            dest.mkdir()
            (dest / "theirs").write_text("theirs")  # another writer published first
    assert os.listdir(tmp_path) == ["v1"] and os.listdir(dest) == ["theirs"]


def test_overwrite_swaps_in_the_new_folder(tmp_path: Path) -> None:
    dest = tmp_path / "ckpt"
    dest.mkdir()
    (dest / "old").write_text("old")
    with atomic_dir(dest, overwrite=True) as tmp:
        assert (dest / "old").exists()  # the old version stays readable while the new one is written
        (tmp / "new").write_text("new")
    assert os.listdir(tmp_path) == ["ckpt"] and os.listdir(dest) == ["new"]


def test_overwrite_puts_the_old_folder_back_if_the_swap_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "ckpt"
    dest.mkdir()
    (dest / "old").write_text("old")
    real_rename = os.rename

    def rename(src: str | Path, dst: str | Path) -> None:
        if ".part-" in Path(src).name:
            raise OSError(5, "I/O error")
        real_rename(src, dst)

    monkeypatch.setattr(fsutil.os, "rename", rename)
    with pytest.raises(OSError, match="I/O error"):
        with atomic_dir(dest, overwrite=True) as tmp:
            (tmp / "new").write_text("new")
    assert os.listdir(tmp_path) == ["ckpt"] and os.listdir(dest) == ["old"]


def test_fresh_names_differ_and_keep_the_stem(tmp_path: Path) -> None:
    names = {fsutil.fresh_name(tmp_path, ".x.tmp-") for _ in range(100)}
    assert len(names) == 100
    assert all(p.parent == tmp_path and p.name.startswith(f".x.tmp-{os.getpid()}-") for p in names)
