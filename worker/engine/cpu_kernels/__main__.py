"""`python -m worker.engine.cpu_kernels`: build the CPU kernels for this torch and CPU.

Exits 0 even when the build is impossible (no AVX-512, no compiler): the engine then uses torch
SDPA, and the message says so. `--strict` exits 1 instead (for checking a build environment).
"""

from __future__ import annotations

import argparse
import sys
import time

from worker.engine import cpu_kernels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.engine.cpu_kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strict", action="store_true", help="exit 1 when the kernels cannot be built")
    parser.add_argument("--any-cpu", action="store_true",
                        help="build even if this CPU lacks AVX-512 (an image built for other machines)")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output")
    args = parser.parse_args(argv)
    failed = 1 if args.strict else 0
    if not (args.any_cpu or cpu_kernels.cpu_supports_kernels()):
        print("cpu kernels: skipped, this CPU has no AVX-512 (the engine uses torch SDPA)")
        return failed
    library = cpu_kernels.library_path()
    if library.exists():
        print(f"cpu kernels: up to date ({library})")
        return 0
    print("cpu kernels: compiling (about 60-90 s) ...", flush=True)
    started = time.monotonic()
    try:
        library = cpu_kernels.build(verbose=args.verbose)
    except Exception as error:  # a compiler missing or failing only costs speed
        reason = (str(error).strip().splitlines() or [repr(error)])[-1]  # a compiler log ends with its verdict
        print(f"cpu kernels: build failed ({reason}); the engine uses torch SDPA", file=sys.stderr)
        return failed
    print(f"cpu kernels: built {library} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
