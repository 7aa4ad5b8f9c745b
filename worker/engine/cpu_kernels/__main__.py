"""`python -m worker.engine.cpu_kernels`: build the CPU kernels for this torch and CPU.

Builds the set for this CPU's instruction set (AVX-512 or AVX2; see __init__.py), or with
`--any-cpu` every set (an image built for other machines). Exits 0 even when the build is
impossible (neither instruction set, no compiler): the engine then uses torch's SDPA, and the
message says so. `--strict` exits 1 instead (for checking a build environment).
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
                        help="build every instruction set's kernels (an image built for other machines)")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output")
    args = parser.parse_args(argv)
    failed = 1 if args.strict else 0
    kernel_sets = cpu_kernels.KERNEL_SETS if args.any_cpu else [cpu_kernels.kernel_set()]
    if kernel_sets == [None]:
        print("cpu kernels: skipped, this CPU has neither AVX-512 nor AVX2 (the engine uses torch SDPA)")
        return failed
    return max(_build(kernels, args.verbose, failed) for kernels in kernel_sets)


def _build(kernels: cpu_kernels.KernelSet, verbose: bool, failed: int) -> int:
    library = cpu_kernels.library_path(kernels)
    if library.exists():
        print(f"cpu kernels: up to date ({library})")
        return 0
    print(f"cpu kernels: compiling the {kernels.name} set (about 1-2 min) ...", flush=True)
    started = time.monotonic()
    try:
        library = cpu_kernels.build(verbose=verbose, kernels=kernels)
    except Exception as error:  # a compiler missing or failing only costs speed
        reason = (str(error).strip().splitlines() or [repr(error)])[-1]  # a compiler log ends with its verdict
        print(f"cpu kernels: build failed ({reason}); the engine uses torch SDPA", file=sys.stderr)
        return failed
    print(f"cpu kernels: built {library} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
