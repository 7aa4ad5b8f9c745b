"""The record a finished build leaves in its directory, and the test "is this build still good".

Invariant: build_info.json is written last, inside the temporary build directory, which then
becomes the model directory by one rename; so a directory holding it holds a complete build.
A build is reused only when everything that shapes its bytes is unchanged: the parameters, this
package's source (the recipe), the library versions and the Python whose stdlib is the corpus.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import tokenizers
import torch
import transformers

BUILD_INFO_FILE = "build_info.json"


@cache
def recipe_digest() -> str:
    """A fingerprint of this package's code: any change to how models are made invalidates old builds."""
    hasher = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        hasher.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return hasher.hexdigest()[:16]


@dataclass(frozen=True)
class BuildParams:
    preset: str
    arch: str
    seed: int
    recipe: str
    python: str
    torch: str
    transformers: str
    tokenizers: str

    @staticmethod
    def current(preset: str, arch: str, seed: int) -> BuildParams:
        return BuildParams(
            preset=preset,
            arch=arch,
            seed=seed,
            recipe=recipe_digest(),
            python=platform.python_version(),
            torch=torch.__version__,
            transformers=transformers.__version__,
            tokenizers=tokenizers.__version__,
        )


def file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def write_build_info(model_dir: Path, params: BuildParams, build_seconds: float) -> None:
    """Record params and the size and hash of every file present; call once the files are final."""
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(model_dir.iterdir())
        if path.is_file()
    }
    record = {"params": asdict(params), "files": files, "build_seconds": round(build_seconds, 1)}
    (model_dir / BUILD_INFO_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_build_info(model_dir: Path) -> dict | None:
    """The build record of `model_dir`, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((model_dir / BUILD_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete_build(model_dir: Path, params: BuildParams) -> bool:
    """Whether `model_dir` holds a whole build made with exactly `params` (sizes checked, not hashes)."""
    record = read_build_info(model_dir)
    if record is None or record.get("params") != asdict(params):
        return False
    for name, facts in record.get("files", {}).items():
        path = model_dir / name
        if not path.is_file() or path.stat().st_size != facts["bytes"]:
            return False
    return True
