"""Render the Helm chart for real and index the objects it produces.

Rendering uses Helm's own Go template engine: the helm_python SDK (Helm v4's Go SDK behind a C
ABI, installed from PyPI) when importable, else a `helm` binary on PATH. With neither, the
calling test is skipped with that reason.
"""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.deploy.tools import CHART, executable, helm_sdk, run

RELEASE = "ferrum-infer"
NAMESPACE = "llm"


class RenderError(Exception):
    """Helm refused to render (a template `fail`, bad values, a template error)."""


@dataclass
class Rendered:
    files: dict[str, str]
    objects: list[dict] = field(default_factory=list)

    def __post_init__(self):
        for path, text in sorted(self.files.items()):
            if path.endswith(".yaml"):
                self.objects += [doc for doc in yaml.safe_load_all(text) if doc]

    @property
    def notes(self) -> str:
        return next((text for path, text in self.files.items() if path.endswith("NOTES.txt")), "")

    def of_kind(self, kind: str) -> list[dict]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        matches = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert matches, f"no {kind} {name} rendered; have {[o['metadata']['name'] for o in self.of_kind(kind)]}"
        return matches[0]

    def names(self, kind: str) -> set[str]:
        return {obj["metadata"]["name"] for obj in self.of_kind(kind)}


def renderer_name() -> str | None:
    if helm_sdk() is not None:
        return "helm_python SDK"
    if executable("helm"):
        return "helm CLI"
    return None


def render(values: dict | None = None) -> Rendered:
    """The chart rendered with `values` (memoised: tests only read the result)."""
    return _render_cached(json.dumps(values or {}, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _render_cached(values_json: str) -> Rendered:
    values = json.loads(values_json)
    sdk = helm_sdk()
    if sdk is not None:
        try:
            with sdk.Chart.load(str(CHART)) as chart:
                files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except sdk.HelmError as error:
            raise RenderError(str(error)) from error
        return Rendered(files)
    helm = executable("helm")
    if helm is None:
        pytest.skip("no Helm renderer: neither helm_python (pip install helm-python-sdk) nor helm on PATH")
    return Rendered(_render_with_cli(helm, values))


def _render_with_cli(helm: str, values: dict) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        values_file = Path(tmp) / "values.json"
        values_file.write_text(json.dumps(values))
        result = run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                      "--values", str(values_file)])
    if result.returncode != 0:
        raise RenderError(result.stderr)
    files: dict[str, str] = {}
    for document in ("\n" + result.stdout).split("\n---\n"):
        head, _, body = document.partition("\n")
        if head.startswith("# Source: "):
            path = head.removeprefix("# Source: ").strip()
            files[path] = files.get(path, "") + "\n---\n" + body
    return files


def lint(values: dict | None = None) -> list[str]:
    """Helm lint findings at warning level or above (strict mode), as readable lines."""
    sdk = helm_sdk()
    if sdk is not None:
        report = sdk.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
        findings = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
        return findings + list(report.get("errors") or [])
    helm = executable("helm")
    if helm is None:
        pytest.skip("no Helm linter: neither helm_python (pip install helm-python-sdk) nor helm on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        values_file = Path(tmp) / "values.json"
        values_file.write_text(json.dumps(values or {}))
        result = run([helm, "lint", "--strict", str(CHART), "--values", str(values_file)])
    return [] if result.returncode == 0 else [result.stdout + result.stderr]
