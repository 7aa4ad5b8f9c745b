"""`python -m tests.deploy.helm_sdk lint|template [-f VALUES.yaml]`: `helm lint --strict` and
`helm template` of the chart through Helm's Go SDK (PyPI's helm-python-sdk), for machines without a
helm binary (`make chart-lint`, `make chart-template`). Output matches the helm CLI's closely:
lint findings one a line, templates as `# Source:` documents.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from tests.deploy.tools import CHART, helm_sdk

SEVERITIES = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.deploy.helm_sdk", description=__doc__)
    parser.add_argument("command", choices=["lint", "template"])
    parser.add_argument("-f", "--values", type=Path, help="a values file, as helm's -f")
    parser.add_argument("--release", default="ferrum-infer")
    parser.add_argument("--namespace", default="default")
    args = parser.parse_args(argv)
    helm = helm_sdk()
    if helm is None:
        print("helm_python is not installed (pip install helm-python-sdk)", file=sys.stderr)
        return 2
    values = yaml.safe_load(args.values.read_text()) if args.values else None
    if args.command == "lint":
        report = helm.lint(str(CHART), values, strict=True, namespace=args.namespace)
        for message in report["messages"]:
            print(f"[{SEVERITIES.get(message['severity'], '?')}] {message['path']}: {message['error']}")
        for error in report.get("errors") or []:
            print(f"[ERROR] {error}")
        failed = report.get("errors") or any(m["severity"] >= 2 for m in report["messages"])
        print(f"{report['total_charts_linted']} chart(s) linted, {'failed' if failed else 'no failures'}")
        return 1 if failed else 0
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name=args.release, namespace=args.namespace, is_install=True)
    for path, text in sorted(manifests.items()):
        if path.endswith(".yaml") and text.strip():
            print(f"---\n# Source: {path}\n{text.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
