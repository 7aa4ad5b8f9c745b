"""`python -m tests.bench [options]` (`make bench`, `make bench-quick`): run, print, save, publish."""

from __future__ import annotations

import shlex
import sys

from tests.bench import options, report
from tests.bench.runner import run_bench


def main(argv: list[str]) -> int:
    config = options.parse(argv)
    command = shlex.join(["python", "-m", "tests.bench", *argv])
    result = run_bench(config, command)
    stamp = result.started_at.replace(":", "").replace("+0000", "Z")
    json_path = config.out_dir / f"bench-{stamp}.json"
    png_path = None
    try:
        from tests.bench.plot import write_plot

        png_path = write_plot(result, config.out_dir / f"bench-{stamp}.png")
    except ImportError as error:
        result.notes.append(f"no plot: {error}")
    result.write_json(json_path)
    section = report.markdown(result, json_path, png_path)
    print(section)
    if config.docs is not None:
        report.append_to_docs(config.docs, section)
        print(f"appended to {config.docs}", file=sys.stderr)
    failed = [r for r in result.results if r.metrics is None or r.metrics.errors]
    return 1 if failed or (result.plumbing and result.plumbing.error) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
