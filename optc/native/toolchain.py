"""Building and running ``optc-run``, the native runner, for an architecture.

* The **TVM runtime** an artifact ships is ``libtvm_runtime.so`` and ``libtvm_ffi.so`` of the
  TVM versions optc compiles with: for the host's architecture the installed wheels' files; for
  another one the same files out of that architecture's ``apache-tvm``/``apache-tvm-ffi`` wheels,
  downloaded once (``pip download``) and kept in the cache (``$OPTC_CACHE_DIR``, else
  ``~/.cache/optc``) under ``tvm-runtime/<arch>-tvm<version>-ffi<version>/``. A model library
  exported by TVM names no libraries itself (``readelf -d``: no NEEDED entries); it resolves
  ``TVMBackend*``/``TVMFFI*`` from those two, which the runner loads, plus ``libtvm_runtime_extra``
  for the contrib kernels a module may call (TopK's sort); ``libtvm_compiler`` is not shipped, so a
  module calling a function only it defines is refused at build time (``runtime_functions``).
* The **runner** (``runner.cc``) compiles with ``g++`` (x86_64) or ``aarch64-linux-gnu-g++`` against
  the installed ``tvm_ffi`` headers (architecture-independent: the aarch64 wheel's are
  byte-identical) and links those two libraries with rpath ``$ORIGIN:$ORIGIN/lib``. Built
  runners are cached under ``runner/<arch>-<key>/``, the key hashing the architecture, the
  compiler's version, ``runner.cc``, the flags and the TVM versions.
* Every cache entry is built in a temp folder beside it and renamed into place when complete,
  so a killed build never leaves a half entry and concurrent builds just race to the rename.

Nothing here imports TVM or torch.
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Mapping, Sequence

from ..fileio import sha256_file
from ..ir.errors import OptcError

RUNNER = "optc-run"
"""File name of the runner in an artifact folder (the libraries lie beside it)."""

RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so", "libtvm_runtime_extra.so")
"""The TVM runtime libraries a runner loads (``extra`` holds the contrib kernels a module may call,
e.g. ``tvm.contrib.sort.topk`` for TopK)."""

SOURCE = Path(__file__).with_name("runner.cc")

# arch -> (C++ compiler, Debian package that has it, wheel platform tag, qemu-user program, sysroot)
ARCHES: dict[str, tuple[str, str, str, str, str]] = {
    "x86_64": ("g++", "g++", "manylinux_2_28_x86_64", "qemu-x86_64", "/usr/x86_64-linux-gnu"),
    "aarch64": ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu", "manylinux_2_28_aarch64", "qemu-aarch64",
                "/usr/aarch64-linux-gnu"),
}
_ALIASES = {"x86": "x86_64", "x86-64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}
_ELF_MACHINE = {62: "x86_64", 183: "aarch64"}
# where each library lies in the installed (or downloaded) wheels
_WHEEL_MEMBERS = {"libtvm_runtime.so": ("apache-tvm", "tvm/lib/libtvm_runtime.so"),
                  "libtvm_ffi.so": ("apache-tvm-ffi", "tvm_ffi/lib/libtvm_ffi.so"),
                  "libtvm_runtime_extra.so": ("apache-tvm", "tvm/lib/libtvm_runtime_extra.so")}
CXXFLAGS = ("-std=c++17", "-O2", "-s")


class NativeError(OptcError):
    """The native runner cannot be built, fetched or run as asked (one line naming the fix)."""


class NativeRunError(NativeError):
    """``optc-run`` refused its inputs or the model failed; ``status`` is its exit status
    (1: the model failed while running, its run-time checks included; 2: usage, files, inputs)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


# -- architectures and versions -----------------------------------------------------------------
def normalize_arch(arch: str) -> str:
    """``x86_64`` or ``aarch64`` for any usual spelling (``x86``, ``amd64``, ``arm64``, ...)."""
    a = _ALIASES.get(str(arch).lower(), str(arch).lower())
    if a not in ARCHES:
        raise NativeError(f"no native runner for architecture {arch!r}; choose one of: {', '.join(ARCHES)}")
    return a


def host_arch() -> str:
    m = platform.machine().lower()
    return _ALIASES.get(m, m)


def tvm_versions() -> tuple[str, str]:
    """The installed ``apache-tvm`` and ``apache-tvm-ffi`` versions (the runtime must match them)."""
    try:
        return metadata.version("apache-tvm"), metadata.version("apache-tvm-ffi")
    except metadata.PackageNotFoundError as e:
        raise NativeError(f"the {e.name} wheel is not installed: pip install optc's requirements") from None


def elf_arch(path: str | os.PathLike) -> str | None:
    """The architecture of an ELF file (``x86_64``, ``aarch64``), or None if it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return _ELF_MACHINE.get(int.from_bytes(head[18:20], "little" if head[5] == 1 else "big"))


def cache_root() -> Path:
    """``$OPTC_CACHE_DIR``, else ``$XDG_CACHE_HOME/optc``, else ``~/.cache/optc``."""
    if os.environ.get("OPTC_CACHE_DIR"):
        return Path(os.environ["OPTC_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optc"


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise NativeError(f"the {module} package is not installed: pip install optc's requirements")
    return Path(list(spec.submodule_search_locations)[0])


def include_dir() -> Path:
    """The tvm-ffi headers (with dlpack) the runner compiles against, from the installed wheel."""
    d = _package_dir("tvm_ffi") / "include"
    if not (d / "tvm" / "ffi" / "function.h").is_file():
        raise NativeError(f"{d}: the tvm-ffi C++ headers are missing (reinstall apache-tvm-ffi)")
    return d


# -- the TVM runtime libraries --------------------------------------------------------------------
def runtime_dir(arch: str) -> Path:
    """Cache folder of the runtime libraries for ``arch`` (whether fetched yet or not)."""
    tvm, ffi = tvm_versions()
    return cache_root() / "tvm-runtime" / f"{normalize_arch(arch)}-tvm{tvm}-ffi{ffi}"


def runtime_libs(arch: str, *, fetch: bool = True) -> list[Path]:
    """``libtvm_runtime.so`` and ``libtvm_ffi.so`` for ``arch``: the installed wheels' files on
    the host's architecture; for another one the cached files from that architecture's wheels,
    downloaded first when ``fetch`` (else a ``NativeError`` naming the command that fetches them)."""
    arch = normalize_arch(arch)
    if arch == host_arch():
        libs = [_package_dir("tvm") / "lib" / "libtvm_runtime.so", _package_dir("tvm_ffi") / "lib" / "libtvm_ffi.so",
                _package_dir("tvm") / "lib" / "libtvm_runtime_extra.so"]
        for lib in libs:
            if not lib.is_file():
                raise NativeError(f"{lib}: missing from the installed TVM wheel (reinstall apache-tvm / apache-tvm-ffi)")
        return libs
    folder = runtime_dir(arch)
    if not all((folder / name).is_file() for name in RUNTIME_LIBS):
        if not fetch:
            raise NativeError(f"the {arch} TVM runtime is not in the cache {folder}: run `python -m optc.native fetch {arch}`")
        fetch_runtime(arch)
    return [folder / name for name in RUNTIME_LIBS]


def pip_command(arch: str, dest: str | os.PathLike) -> list[str]:
    """The ``pip download`` that fetches ``arch``'s wheels of the installed TVM versions."""
    tvm, ffi = tvm_versions()
    return [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
            "--only-binary=:all:", "--platform", ARCHES[normalize_arch(arch)][2],
            "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}",
            f"apache-tvm=={tvm}", f"apache-tvm-ffi=={ffi}", "-d", str(dest)]


def fetch_runtime(arch: str, wheel_dir: str | os.PathLike | None = None) -> Path:
    """Put ``arch``'s runtime libraries in the cache (once) and return the folder.

    The wheels come from ``wheel_dir`` or ``$OPTC_WHEEL_DIR`` when they hold them (files named as
    pip names them), else from PyPI through ``pip download``; only the two libraries are kept,
    each checked against the sha256 its wheel's RECORD lists."""
    arch = normalize_arch(arch)
    folder = runtime_dir(arch)
    if all((folder / name).is_file() for name in RUNTIME_LIBS):
        return folder
    tvm, ffi = tvm_versions()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as tmp:
        tmp = Path(tmp)
        wheels = _local_wheels(arch, wheel_dir or os.environ.get("OPTC_WHEEL_DIR"))
        if wheels is None:
            cmd = pip_command(arch, tmp / "wheels")
            shown = " ".join(["pip"] + pip_command(arch, "DIR")[3:])
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            except subprocess.TimeoutExpired:
                r = None
            if r is None or r.returncode != 0:
                why = "timed out" if r is None else _last_line(r.stderr or r.stdout)
                raise NativeError(f"cannot download the {arch} TVM runtime ({why}); where PyPI is reachable run "
                                  f"`python -m optc.native fetch {arch}`, or `{shown}` and set OPTC_WHEEL_DIR=DIR")
            wheels = _local_wheels(arch, tmp / "wheels")
            if wheels is None:
                raise NativeError(f"pip downloaded no {arch} wheels of apache-tvm {tvm} / apache-tvm-ffi {ffi}")
        staged = tmp / "runtime"
        staged.mkdir()
        record = {"arch": arch, "tvm": tvm, "tvm_ffi": ffi, "files": {}}
        for name in RUNTIME_LIBS:
            dist, member = _WHEEL_MEMBERS[name]
            wheel = wheels[dist]
            _extract(wheel, member, staged / name)
            if elf_arch(staged / name) != arch:
                raise NativeError(f"{wheel.name}: {member} is not an {arch} library")
            record["files"][name] = {"wheel": wheel.name, "sha256": sha256_file(staged / name)}
        (staged / "runtime.json").write_text(json.dumps(record, indent=1))
        if folder.is_dir():  # an entry from an optc that shipped fewer libraries: set it aside
            try:
                os.rename(folder, tmp / "previous")
            except OSError:
                pass  # another process replaced it meanwhile
        _publish(staged, folder)
    return folder


def _local_wheels(arch: str, wheel_dir) -> dict[str, Path] | None:
    if not wheel_dir or not Path(wheel_dir).is_dir():
        return None
    tvm, ffi = tvm_versions()
    found = {}
    for dist, version in (("apache-tvm", tvm), ("apache-tvm-ffi", ffi)):
        stem = dist.replace("-", "_")
        hits = sorted(p for p in Path(wheel_dir).glob(f"{stem}-{version}-*.whl") if f"_{arch}" in p.name)
        if not hits:
            return None
        found[dist] = hits[0]
    return found


def _extract(wheel: Path, member: str, dest: Path) -> None:
    """``member`` of ``wheel`` into ``dest``, verified against the wheel's RECORD."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
            want = None
            if records:
                for row in csv.reader(io.TextIOWrapper(zf.open(records[0]), "utf-8")):
                    if row and row[0] == member and len(row) > 1 and row[1].startswith("sha256="):
                        want = row[1][len("sha256="):]
            with zf.open(member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except KeyError:
        raise NativeError(f"{wheel}: has no {member}") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise NativeError(f"{wheel}: cannot be read as a wheel ({e})") from None
    if want is not None:
        got = base64.urlsafe_b64encode(hashlib.sha256(dest.read_bytes()).digest()).rstrip(b"=").decode()
        if got != want:
            raise NativeError(f"{wheel}: {member} does not match the sha256 in the wheel's RECORD (corrupt download)")
    os.chmod(dest, 0o755)


def _publish(staged: Path, folder: Path) -> None:
    """Rename a complete cache entry into place; a concurrent builder's entry wins the race."""
    for f in staged.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    try:
        os.rename(staged, folder)
    except OSError:
        if not folder.is_dir():
            raise


# -- building the runner ----------------------------------------------------------------------------
def compiler(arch: str) -> str:
    """The C++ compiler for ``arch`` (its path); a ``NativeError`` naming the package if missing."""
    arch = normalize_arch(arch)
    cxx, package = ARCHES[arch][:2]
    if arch == host_arch():
        cxx = os.environ.get("CXX") or cxx
    found = shutil.which(cxx)
    if found is None:
        raise NativeError(f"building the {arch} runner needs the C++ compiler {cxx}, which is not installed "
                          f"(Debian/Ubuntu: apt-get install {package})")
    return found


@functools.lru_cache(maxsize=None)
def _compiler_version(cxx: str) -> str:
    """First line of ``cxx --version`` (part of the runner's cache key; asked once per process)."""
    try:
        r = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
        return (r.stdout.splitlines() or ["?"])[0]
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def runner_key(arch: str) -> str:
    """The cache key of the runner for ``arch``: architecture, compiler version, ``runner.cc``,
    flags and TVM versions."""
    arch = normalize_arch(arch)
    cxx = compiler(arch)
    parts = {"arch": arch, "cxx": os.path.basename(cxx), "cxx_version": _compiler_version(cxx),
             "source": sha256_file(SOURCE), "flags": list(CXXFLAGS), "libs": list(RUNTIME_LIBS),
             "tvm": tvm_versions()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def build_runner(arch: str, out_dir: str | os.PathLike | None = None) -> Path:
    """Compile ``optc-run`` for ``arch`` (once per cache key) and return its path: the cached
    binary, or a copy of it in ``out_dir`` when given."""
    arch = normalize_arch(arch)
    key = runner_key(arch)
    folder = cache_root() / "runner" / f"{arch}-{key}"
    binary = folder / RUNNER
    if not binary.is_file():
        cxx = compiler(arch)
        libs = runtime_libs(arch)
        lib_dirs = list(dict.fromkeys(str(p.parent) for p in libs))
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as tmp:
            staged = Path(tmp) / "runner"
            staged.mkdir()
            tvm, ffi = tvm_versions()
            cmd = [cxx, *CXXFLAGS, f'-DOPTC_TVM_VERSION="{tvm}"', f'-DOPTC_TVM_FFI_VERSION="{ffi}"',
                   f"-I{include_dir()}", str(SOURCE), "-o", str(staged / RUNNER),
                   *[f"-L{d}" for d in lib_dirs], *[f"-Wl,-rpath-link,{d}" for d in lib_dirs],
                   "-Wl,--no-as-needed", "-ltvm_runtime_extra", "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN:$ORIGIN/lib"]
            t = time.perf_counter()
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            except subprocess.TimeoutExpired:
                raise NativeError(f"compiling the {arch} runner with {cxx} timed out") from None
            if r.returncode != 0:
                errors = [ln for ln in r.stderr.splitlines() if "error" in ln] or r.stderr.splitlines() or ["?"]
                raise NativeError(f"compiling the {arch} runner failed: {errors[0].strip()}")
            if elf_arch(staged / RUNNER) != arch:
                raise NativeError(f"{cxx} did not produce an {arch} program")
            (staged / "build.json").write_text(json.dumps(
                {"arch": arch, "key": key, "command": cmd, "seconds": round(time.perf_counter() - t, 2)}, indent=1))
            os.chmod(staged / RUNNER, 0o755)
            _publish(staged, folder)
    if out_dir is None:
        return binary
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(binary, out / RUNNER)
    os.chmod(out / RUNNER, 0o755)
    return out / RUNNER


def ship_runtime(arch: str, folder: str | os.PathLike) -> list[str]:
    """Copy the runner and its runtime libraries for ``arch`` into the artifact ``folder``
    (flat: ``optc-run``, ``libtvm_runtime.so``, ``libtvm_ffi.so`` beside ``model.so``; the
    runner finds the libraries through its rpath ``$ORIGIN`` and the model as ``model.so``
    beside itself). Returns the file names written, relative to ``folder``."""
    arch = normalize_arch(arch)
    folder = Path(folder)
    build_runner(arch, folder)
    names = [RUNNER]
    for lib in runtime_libs(arch):
        shutil.copyfile(lib, folder / lib.name)
        os.chmod(folder / lib.name, 0o755)
        names.append(lib.name)
    return names


# -- running ------------------------------------------------------------------------------------------
@dataclass
class NativeResult:
    """A successful ``optc-run``: what it printed and how long the process took."""

    stdout: str
    seconds: float
    command: list[str]


def runner_command(folder: str | os.PathLike, emulate: bool | None = None) -> list[str]:
    """How to start the runner in ``folder``: directly, or under ``qemu-<arch> -L <sysroot>``
    when it is built for another architecture (``emulate=None``) or when asked (``True``)."""
    folder = Path(folder)
    runner = folder / RUNNER
    arch = elf_arch(runner)
    if arch is None:
        raise NativeError(f"{folder}: has no native runner ({RUNNER}); compile it for a target that ships one")
    foreign = arch != host_arch()
    if emulate is None:
        emulate = foreign
    if not emulate:
        if foreign:
            raise NativeError(f"{runner} is an {arch} program; this machine is {host_arch()} (run it there, or under qemu)")
        return [str(runner)]
    qemu, sysroot = ARCHES[arch][3], ARCHES[arch][4]
    if shutil.which(qemu) is None:
        raise NativeError(f"running the {arch} runner here needs {qemu}, which is not installed "
                          "(Debian/Ubuntu: apt-get install qemu-user)")
    if foreign and not Path(sysroot, "lib").is_dir():
        raise NativeError(f"running the {arch} runner under {qemu} needs the {arch} C/C++ libraries in {sysroot} "
                          f"(Debian/Ubuntu: apt-get install {ARCHES[arch][1]})")
    return [shutil.which(qemu), "-L", sysroot, str(runner)]


def run_native(folder: str | os.PathLike, inputs: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
               outputs: str | os.PathLike | None = None, extra_args: Sequence[str] = (), emulate: bool | None = None,
               timeout: float | None = None) -> NativeResult:
    """Run the artifact ``folder``'s ``optc-run`` on ``inputs`` (an ``.npz`` path, or a mapping
    of input name to ``.npy`` path), writing ``outputs`` (``.npz``) when given; ``extra_args``
    go to the runner (``--repeat``, ``--threads``, ...). An ``aarch64`` runner runs under
    qemu-user on another host. Raises ``NativeRunError`` with the runner's one-line message
    (and its exit status) when it fails."""
    cmd = runner_command(folder, emulate)
    cmd += ["--model", str(Path(folder) / "model.so")]
    if isinstance(inputs, Mapping):
        cmd += [f"{name}={path}" for name, path in inputs.items()]
    elif inputs is not None:
        cmd.append(str(inputs))
    if outputs is not None:
        cmd += ["-o", str(outputs)]
    cmd += [str(a) for a in extra_args]
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NativeRunError(f"{RUNNER} did not finish within {timeout} s", 1) from None
    seconds = time.perf_counter() - t
    if r.returncode == 0:
        return NativeResult(r.stdout, seconds, cmd)
    if r.returncode < 0:
        import signal

        raise NativeRunError(f"{RUNNER} was killed by {signal.Signals(-r.returncode).name}", 1)
    prefix = f"{RUNNER}: error: "
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(prefix)]
    msg = lines[-1][len(prefix):] if lines else _last_line(r.stderr) or f"{RUNNER} exited with status {r.returncode}"
    raise NativeRunError(msg, r.returncode)


def rpc_server_command(folder: str | os.PathLike, host: str = "127.0.0.1", port: int = 0,
                       extra_args: Sequence[str] = (), emulate: bool | None = None) -> list[str]:
    """How to start the artifact ``folder``'s runner as a TVM RPC server (``optc-run --rpc-server``,
    under qemu-user for another architecture); port 0 takes any free port (it prints the one bound)."""
    return runner_command(folder, emulate) + ["--rpc-server", "--host", host, "--port", str(port),
                                              *[str(a) for a in extra_args]]


class RpcServer:
    """An ``optc-run --rpc-server`` process of this session (``start_rpc_server``): ``address`` is
    ``HOST:PORT``; ``stop()`` (or leaving the ``with`` block) ends it and any session it serves."""

    def __init__(self, command: list[str], timeout: float = 120.0):
        import selectors
        import signal

        self.command = command
        # The server's stderr shares this file's offset: the log is read with pread, which never
        # moves it (a seek-and-read here would let the server's next line overwrite the first).
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                        start_new_session=True)
        self._signal = signal
        line = ""
        with selectors.DefaultSelector() as sel:
            sel.register(self.process.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while "listening on" not in line:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.stop()
                    raise NativeError(f"{RUNNER} --rpc-server did not start listening within {timeout:g} s")
                line = self.process.stdout.readline()
                if not line:  # exited
                    self.stop()
                    raise NativeError(f"{RUNNER} --rpc-server failed: {_last_line(self.log()) or 'it exited'}")
        self.banner = line.strip()
        self.address = line.split("listening on ", 1)[1].split()[0]
        self.port = int(self.address.rsplit(":", 1)[1])

    def log(self) -> str:
        """What the server wrote on stderr so far (one line per session)."""
        fd = self._log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def stop(self) -> None:
        p = self.process
        if p.poll() is None:  # not reaped yet, so its pid (and process group) are still this one's
            try:
                os.killpg(p.pid, self._signal.SIGTERM)  # the server and the session it serves
            except ProcessLookupError:
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, self._signal.SIGKILL)
                p.wait()
        if p.stdout:
            p.stdout.close()

    def __enter__(self) -> "RpcServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_rpc_server(folder: str | os.PathLike, host: str = "127.0.0.1", port: int = 0,
                     extra_args: Sequence[str] = (), timeout: float = 120.0) -> RpcServer:
    """Start the artifact ``folder``'s runner as an RPC server on ``host`` (loopback by default)
    and wait until it listens: ``with start_rpc_server(folder) as srv: ... srv.address ...``."""
    return RpcServer(rpc_server_command(folder, host, port, extra_args), timeout)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""




_NAME = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+")


@functools.lru_cache(maxsize=None)
def runtime_functions(arch: str) -> frozenset[str]:
    """The dotted global function names (``vm.builtin.copy``, ``tvm.contrib.sort.topk``, ...) the
    shipped runtime libraries for ``arch`` can register: the string literals they hold. A name a
    module calls that is not among them would fail when the module loads on the board."""
    names: set[str] = set()
    for lib in runtime_libs(arch):
        names.update(m.decode() for m in _NAME.findall(lib.read_bytes()))
    return frozenset(names)
