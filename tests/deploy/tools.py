"""Finding the real tools the deployment tests run, and running them.

Each finder returns None when its tool is genuinely absent, so a test can skip with the reason.
Tools installed from PyPI into the virtualenv (the [test] extra) sit next to its python.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "ferrum-infer"
DASHBOARD = REPO / "docs" / "grafana" / "ferrum-infer-dashboard.json"


def executable(name: str) -> str | None:
    """`name` from the virtualenv running the tests, else from PATH."""
    beside_python = Path(sys.executable).parent / name
    return str(beside_python) if beside_python.is_file() else shutil.which(name)


def run(command: list[str], cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def compose_command() -> list[str] | None:
    """`docker compose` (the CLI plugin) when it runs here, else a standalone Compose v2+ binary.

    Compose v1 (the old Python docker-compose) lacks the spec features the files use, so it does
    not count.
    """
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"]).returncode == 0:
        return [docker, "compose"]
    standalone = executable("docker-compose")
    if standalone:
        version = run([standalone, "version", "--short"])
        major = re.match(r"v?(\d+)", version.stdout.strip())
        if version.returncode == 0 and major and int(major.group(1)) >= 2:
            return [standalone]
    return None


def helm_sdk():
    """The helm_python module (Helm's Go SDK through a C ABI, from PyPI), or None."""
    try:
        import helm_python
    except ImportError:
        return None
    return helm_python


def known_settings() -> set[str]:
    """Every FERRUM_INFER_* variable some process reads (services/config.py)."""
    from services import config

    classes = (config.GatewaySettings, config.SchedulerSettings, config.WorkerSettings)
    names = {config.ENV_PREFIX + name.upper() for cls in classes for name in cls.model_fields}
    return names | {config.ENV_PREFIX + "CONFIG"}
