"""The CUDA toolchain: find ``nvcc``, compile TVM's generated CUDA C with it, and put the compiled
device code into the exported library.

TVM 0.27 compiles device code through the global callback ``tvm_callback_cuda_compile``; its
default uses NVRTC (needs the ``cuda-bindings`` package and ``libnvrtc``) or, with
``TVM_CUDA_COMPILE_MODE=nvcc``, whatever ``nvcc`` is first on ``PATH``. optc does neither: the
CUDA target finds ``nvcc`` itself (``find_nvcc``: ``$CUDA_HOME``/``$CUDA_PATH``, ``PATH``, the
``nvidia-cuda-nvcc`` wheel, ``/usr/local/cuda*``) and ``install_compiler`` registers a callback
that runs it by its absolute path — no environment variable is set. The callback is installed
when a CUDA build starts (``CUDATarget.check_toolchain``), not at import, and compiles for the
``arch`` of the current TVM target (``Target.current()``, set by the build), embedding both the
SASS for that architecture and its PTX, so code built for ``sm_80`` also runs (JIT from PTX) on
an ``sm_90`` GPU. TVM calls it only in a process that has the CUDA driver; without one (this
build machine) the module keeps CUDA source and ``export_library`` (below) compiles it.

No ``--use_fast_math``: optc's numbers must match the interpreter (``__expf``/``__sinf`` and
flushed denormals do not); the kernels that matter are memory-bound.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

_CALLBACK = "tvm_callback_cuda_compile"
_FLAGS = [
    "-O3",
    "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr", "--expt-extended-lambda",
]


def _candidates() -> list[Path]:
    out: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root:
            out.append(Path(root) / "bin" / "nvcc")
    which = shutil.which("nvcc")
    if which:
        out.append(Path(which))
    try:  # the nvidia-cuda-nvcc wheel: nvidia/cu13/bin/nvcc (CUDA 13), nvidia/cuda_nvcc/bin/nvcc (12)
        import nvidia  # type: ignore[import-not-found]

        for base in getattr(nvidia, "__path__", []):
            out += [Path(base) / "cu13" / "bin" / "nvcc", Path(base) / "cuda_nvcc" / "bin" / "nvcc"]
    except ImportError:
        pass
    out.append(Path("/usr/local/cuda/bin/nvcc"))
    out += [Path(p) for p in sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"), reverse=True)]
    return out


@functools.lru_cache(maxsize=1)
def find_nvcc() -> str | None:
    """The absolute path of the ``nvcc`` optc compiles with, or None."""
    for c in _candidates():
        if c.is_file() and os.access(c, os.X_OK):
            return str(c.resolve())
    return None


@functools.lru_cache(maxsize=8)
def nvcc_archs(nvcc: str) -> frozenset[str]:
    """The real architectures ``nvcc`` can generate code for (``sm_75``, ``sm_90``, ...)."""
    try:
        out = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(w for w in out.split() if w.startswith("sm_"))


@functools.lru_cache(maxsize=8)
def nvcc_version(nvcc: str) -> str:
    """``"13.0"`` (the ``release`` line of ``nvcc --version``), or ``""``."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in out.splitlines():
        if "release" in line:
            return line.split("release", 1)[1].split(",", 1)[0].strip()
    return ""


def gencode(arch: str) -> list[str]:
    """nvcc flags for SASS of ``arch`` (``sm_90``) plus its PTX (forward compatible)."""
    cc = arch.removeprefix("sm_")
    return ["-gencode", f"arch=compute_{cc},code=[sm_{cc},compute_{cc}]"]


def compile_cuda(code: str, arch: str, nvcc: str | None = None) -> bytearray:
    """Compile CUDA C ``code`` for ``arch`` into a fatbin (SASS + PTX)."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (pip install nvidia-cuda-nvcc, or a CUDA toolkit)")
    with tempfile.TemporaryDirectory(prefix="optc_cuda_") as tmp:
        src, dst = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.fatbin"
        src.write_text(code)
        cmd = [nvcc, "--fatbin", *gencode(arch), *_FLAGS, "-o", str(dst), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed ({' '.join(cmd)}):\n{proc.stdout}{proc.stderr}")
        data = bytearray(dst.read_bytes())
    if not data:
        raise RuntimeError("nvcc produced an empty fatbin")
    return data


def _current_arch() -> str:
    import tvm

    target = tvm.target.Target.current(allow_none=True)
    arch = str(target.attrs.get("arch", "")) if target is not None else ""
    if not arch.startswith("sm_"):
        raise RuntimeError("compiling CUDA code outside a CUDA target scope (no arch)")
    return arch


@functools.lru_cache(maxsize=1)
def install_compiler(nvcc: str) -> None:
    """Make TVM compile device code with ``nvcc`` (once per process; see the module doc)."""
    import tvm.support.nvcc  # noqa: F401  (registers TVM's callback on import: ours must come after)
    import tvm_ffi

    def callback(code):
        return compile_cuda(str(code), _current_arch(), nvcc)

    tvm_ffi.register_global_func(_CALLBACK, callback, override=True)


# -- device code in the exported library ---------------------------------------------------------
# TVM 0.27 generates CUDA C and, in a process without the CUDA runtime (no driver: this build
# machine), keeps it as *source* in the module (format "cuda"); the runtime would compile it
# when the library is loaded, through the Python callback above (NVRTC or nvcc on the GPU
# machine, and no C++ runner could load it at all). ``export_library`` therefore compiles every
# CUDA source module of the library with nvcc here and stores the fatbin (format "fatbin",
# loaded with ``cuModuleLoadData``): the artifact runs without a compiler. In a process that has
# the CUDA runtime the modules are compiled when they are built (through the callback) and are
# left as they are.
#
# The library blob (``__tvm_ffi__library_bin``, what ``ModulePackImportsToC/LLVM`` embed) is
# [u64 size][import tree: row pointers, child indices][per module: kind, then its bytes]; a CUDA
# module's bytes are [format][function table][code], the code last.
_U64 = struct.Struct("<Q")


def _read_u64(data: bytes, pos: int) -> tuple[int, int]:
    return _U64.unpack_from(data, pos)[0], pos + 8


def _read_str(data: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _read_u64(data, pos)
    if pos + n > len(data):
        raise ValueError("truncated library blob")
    return data[pos:pos + n], pos + n


def _str(b: bytes) -> bytes:
    return _U64.pack(len(b)) + b


def parse_library_blob(data: bytes) -> tuple[list[int], list[int], list[tuple[bytes, bytes | None]]]:
    """``(row pointers, child indices, [(kind, bytes or None for the host library)])``."""
    total, pos = _read_u64(data, 0)
    if total != len(data) - 8:
        raise ValueError(f"library blob of {len(data)} bytes says {total + 8}")
    vecs = []
    for _ in range(2):
        n, pos = _read_u64(data, pos)
        vecs.append(list(_U64.unpack_from(data, pos + 8 * i)[0] for i in range(n)))
        pos += 8 * n
    entries = []
    while pos < len(data):
        kind, pos = _read_str(data, pos)
        if kind == b"_lib":  # the host library itself: no bytes
            entries.append((kind, None))
            continue
        blob, pos = _read_str(data, pos)
        entries.append((kind, blob))
    return vecs[0], vecs[1], entries


def write_library_blob(rows: list[int], kids: list[int], entries) -> bytes:
    body = _U64.pack(len(rows)) + b"".join(_U64.pack(r) for r in rows)
    body += _U64.pack(len(kids)) + b"".join(_U64.pack(k) for k in kids)
    for kind, blob in entries:
        body += _str(kind) + (b"" if blob is None else _str(blob))
    return _U64.pack(len(body)) + body


def _split_cuda_module(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """``(format, function table bytes, code)`` of a serialized CUDA module."""
    fmt, pos = _read_str(blob, 0)
    for p in range(pos, len(blob) - 7):
        n = _U64.unpack_from(blob, p)[0]
        if p + 8 + n == len(blob):
            code = blob[p + 8:]
            if fmt != b"cuda" or b"__global__" in code:
                return fmt, blob[pos:p], code
    raise ValueError("cannot find the code of a CUDA module in the library blob")


def compile_library_blob(data: bytes, arch: str, nvcc: str | None = None) -> tuple[bytes, int]:
    """``data`` with every CUDA module held as source compiled to a fatbin; returns the new
    blob and how many modules were compiled."""
    rows, kids, entries = parse_library_blob(data)
    done = 0
    out = []
    for kind, blob in entries:
        if kind == b"cuda" and blob is not None and _read_str(blob, 0)[0] == b"cuda":
            fmt, fmap, code = _split_cuda_module(blob)
            if fmt == b"cuda":
                fatbin = bytes(compile_cuda(code.decode(), arch, nvcc))
                blob = _str(b"fatbin") + fmap + _str(fatbin)
                done += 1
        out.append((kind, blob))
    return write_library_blob(rows, kids, out), done


def export_library(executable, path: str, arch: str, nvcc: str | None = None) -> int:
    """Export a built CUDA ``executable`` to ``path`` (a shared library) with its device code
    compiled by nvcc (see above); returns how many CUDA modules were compiled here."""
    from tvm.runtime import _ffi_api

    mod = executable.mod
    blob, done = compile_library_blob(_ffi_api.ModulePackImportsToTensor(mod).numpy().tobytes(), arch, nvcc)

    def pack(_mod, is_system_lib, prefix, workspace):
        if is_system_lib or prefix:
            raise RuntimeError("optc does not export CUDA modules as system libraries")
        ws = Path(workspace)
        (ws / "devc.bin").write_bytes(blob)
        asm = ws / "devc.S"
        asm.write_text(
            "\t.section .rodata\n\t.globl __tvm_ffi__library_bin\n\t.type __tvm_ffi__library_bin, @object\n"
            "\t.balign 16\n__tvm_ffi__library_bin:\n"
            f"\t.incbin \"{ws / 'devc.bin'}\"\n"
            "\t.size __tvm_ffi__library_bin, . - __tvm_ffi__library_bin\n"
            "\t.section .note.GNU-stack,\"\",@progbits\n")
        return str(asm)

    mod.export_library(str(path), fpack_imports=pack)
    return done
