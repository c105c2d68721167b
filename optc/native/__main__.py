"""``python -m optc.native fetch ARCH`` | ``build ARCH [-o DIR]`` | ``libs ARCH``.

``fetch`` puts ARCH's TVM runtime libraries in the cache (a download for a foreign architecture)
and builds the runner when ARCH's compiler is installed; ``build`` builds (or finds) the runner;
``libs`` prints the runtime libraries' paths. Errors are one line, exit status 2."""

from __future__ import annotations

import argparse
import sys

from . import toolchain


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m optc.native", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["fetch", "build", "libs"])
    p.add_argument("arch", help="x86_64 or aarch64 (x86, arm64 accepted)")
    p.add_argument("-o", "--out-dir", help="build: copy the runner into this folder")
    args = p.parse_args(argv)
    try:
        arch = toolchain.normalize_arch(args.arch)
        if args.command == "libs":
            for lib in toolchain.runtime_libs(arch):
                print(lib)
        elif args.command == "fetch":
            libs = toolchain.runtime_libs(arch)
            print(f"{arch} TVM runtime: {libs[0].parent}")
            try:
                print(f"{arch} runner: {toolchain.build_runner(arch)}")
            except toolchain.NativeError as e:
                print(f"{arch} runner not built: {e}")
        else:
            print(toolchain.build_runner(arch, args.out_dir))
    except toolchain.NativeError as e:
        print(f"optc: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
