"""Moving a finished build into place with renames, safe against a concurrent builder.

Invariants: the target path is at every moment absent, a complete old build, or a complete new
build, never half of one; a directory that is not one of our builds is never replaced.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from worker.demo_model.build_info import read_build_info


def is_replaceable(target: Path) -> bool:
    """True when `target` is absent, an empty directory, or a build of ours (of any parameters)."""
    if not target.exists():
        return True
    if not target.is_dir():
        return False
    return read_build_info(target) is not None or not any(target.iterdir())


def _rename_into_place(built: Path, target: Path) -> bool:
    """Rename `built` to `target`; False when a non-empty `target` is in the way."""
    try:
        os.rename(built, target)
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


def install(built: Path, target: Path, is_wanted: Callable[[Path], bool]) -> None:
    """Make the finished build directory `built` appear at `target`.

    When another process installed a wanted build there first, ours is discarded (the caller
    removes `built`). An outdated build of ours at `target` is renamed aside and deleted.
    """
    # mkdtemp (and safetensors) make private files; a model directory is for every reader.
    os.chmod(built, 0o755)
    for path in built.iterdir():
        os.chmod(path, 0o644)
    if _rename_into_place(built, target):
        return
    if is_wanted(target):
        return
    if not is_replaceable(target):
        raise FileExistsError(f"{target} exists and is not a demo model build; not replacing it")
    outdated = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.outdated-"))
    try:
        os.rename(target, outdated / "model")
    except FileNotFoundError:
        pass  # another builder moved it aside already
    try:
        if not _rename_into_place(built, target) and not is_wanted(target):
            raise FileExistsError(f"{target} was replaced by an unexpected build while installing")
    finally:
        shutil.rmtree(outdated, ignore_errors=True)
