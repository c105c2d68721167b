"""The native runner: ``optc-run``, a small C++ program on the TVM runtime that runs an artifact
where there is no Python (an arm64 board), and the machinery that builds it for an architecture.

    >>> from optc import native
    >>> native.ship_runtime("aarch64", "out.optc")      # optc-run + libtvm_runtime.so + libtvm_ffi.so
    ['optc-run', 'libtvm_runtime.so', 'libtvm_ffi.so']
    >>> native.run_native("out.optc", "inputs.npz", "outputs.npz", ["--repeat", "10"])  # qemu off-arm

On the board: ``./optc-run inputs.npz -o outputs.npz [--repeat N --warmup K --threads T]`` in the
artifact folder (``./optc-run --help``). The runner reads the signature embedded in ``model.so``,
checks the inputs as optc's Python runtime does, and prints every error as one line
``optc-run: error: ...`` (exit 2: usage, files, inputs; exit 1: the model failed while running,
its run-time checks included). ``toolchain.py`` has the details (caches, layouts, qemu).

On the board, ``./optc-run --rpc-server --port 9090`` serves TVM's RPC protocol (no Python
there either), and here ``optc bench out.optc --remote board:9090`` uploads the model and times it
on the board; ``native.run_remote(folder, inputs, "board:9090")`` runs it there once
(``remote.py``; ``--tracker HOST:PORT --key KEY`` on the board, ``--rpc-key KEY`` here, go through
a TVM RPC tracker). Under qemu, an arm64 artifact's timings say nothing about a board.

``python -m optc.native fetch aarch64`` prefetches the aarch64 TVM runtime (and builds the runner
when the cross compiler is there), e.g. from ``scripts/setup.sh``.
"""

from __future__ import annotations

from .remote import RemoteError, run_remote
from .toolchain import (ARCHES, RUNNER, RUNTIME_LIBS, NativeError, NativeResult, NativeRunError, build_runner,
                        cache_root, compiler, elf_arch, fetch_runtime, host_arch, normalize_arch, RpcServer,
                        rpc_server_command, run_native, runner_command, runtime_functions, runtime_libs, ship_runtime,
                        start_rpc_server)

__all__ = ["ARCHES", "RUNNER", "RUNTIME_LIBS", "NativeError", "NativeResult", "NativeRunError", "RemoteError",
           "build_runner", "cache_root", "compiler", "elf_arch", "fetch_runtime", "host_arch", "normalize_arch",
           "RpcServer", "rpc_server_command", "run_native", "run_remote", "runner_command", "runtime_functions", "runtime_libs", "ship_runtime",
           "start_rpc_server"]
