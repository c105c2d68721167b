"""Running and timing an artifact on another machine over TVM's RPC: ``optc bench --remote``.

The board serves TVM's RPC protocol, with no Python there, from the artifact's own runner::

    board$ ./optc-run --rpc-server --port 9090                 # serves one client at a time
    board$ ./optc-run --rpc-server --port 9090 --tracker T:9190 --key rk3588   # or via a tracker

(TVM's own ``python -m tvm.exec.rpc_server`` works too). Here, ``connect("board:9090")`` tells a
server from a tracker by asking first (a tracker answers its magic number, a server hangs up),
then opens a session: with a tracker it requests a board registered under ``key``. Every wait
is bounded (``timeout``): refused, unreachable, busy or foreign endpoints fail with one line.

    >>> remote = connect("board:9090")                       # or connect("tracker:9190", key="rk3588")
    >>> model = remote.load("out.optc")                      # uploads model.so, a Relax VM on the board
    >>> model.run({"x": x})                                  # outputs, computed on the board
    >>> model.time({"x": x}, repeat=50)                      # ms per run, timed on the board

``load`` verifies the artifact's files first, checks the board (architecture, CPU features: an
``optc-run`` server answers ``optc.rpc.info``/``optc.rpc.check_host``; TVM's Python server only
fails to load a foreign library) and that the library's embedded signature is the manifest's.
Inputs are checked against the signature here; timings come from TVM's ``time_evaluator`` on
the board (the VM's ``invoke_stateful``: the model call alone, inputs already on the board).

Unlike the rest of ``optc.native`` this module imports TVM (its RPC client), lazily and without
torch, through ``optc.codegen.runtime``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .toolchain import NativeError, normalize_arch

RPC_MAGIC = 0xFF271
TRACKER_MAGIC = 0x2F271
TRACKER_SUCCESS, TRACKER_REQUEST, TRACKER_SUMMARY = 0, 4, 6
DEFAULT_TIMEOUT = 30.0
"""Seconds to wait for a connection, the handshake, and for a tracker to hand out a board."""


class RemoteError(NativeError):
    """The remote machine cannot be reached, or cannot run the artifact (one line)."""


def parse_address(text: str, flag: str = "--remote") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) as ``(host, port)``; a one-line error otherwise."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]/]+):(\d{1,5})", str(text).strip())
    if not m:
        raise RemoteError(f"{flag} must be HOST:PORT (e.g. 192.168.1.20:9090), got {text!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 1 <= int(port) <= 65535:
        raise RemoteError(f"{flag} port must be 1..65535, got {port}")
    return host, int(port)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("closed")
        buf += chunk
    return buf


def _open(host: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise RemoteError(f"{host}:{port}: no answer within {timeout:g} s (unreachable, or a firewall drops it)") from None
    except socket.gaierror as e:
        raise RemoteError(f"{host}:{port}: unknown host ({e.strerror})") from None
    except ConnectionRefusedError:
        raise RemoteError(f"{host}:{port}: connection refused (is `optc-run --rpc-server --port {port}` "
                          "or a TVM RPC tracker running there?)") from None
    except OSError as e:
        raise RemoteError(f"{host}:{port}: cannot connect ({e.strerror or e})") from None


def _send_json(sock: socket.socket, value) -> None:
    data = json.dumps(value).encode()
    sock.sendall(struct.pack("<i", len(data)) + data)


def _recv_json(sock: socket.socket):
    (n,) = struct.unpack("<i", _recv_exact(sock, 4))
    if not 0 <= n <= 1 << 24:
        raise ConnectionResetError("bad message size")
    return json.loads(_recv_exact(sock, n).decode())


def probe(host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> tuple[str, socket.socket | None]:
    """What listens at ``host:port``: ``("tracker", open socket past the magic exchange)`` or
    ``("server", None)``. Sends the tracker magic: a tracker echoes it, an RPC server (optc-run's
    or TVM's) hangs up on it; no answer within ``timeout`` means busy or not TVM at all."""
    sock = _open(host, port, timeout)
    try:
        sock.settimeout(timeout)
        sock.sendall(struct.pack("<i", TRACKER_MAGIC))
        try:
            head = _recv_exact(sock, 4)
        except (ConnectionResetError, BrokenPipeError):
            sock.close()
            return "server", None
        except socket.timeout:
            raise RemoteError(f"{host}:{port}: accepted the connection but did not answer within {timeout:g} s "
                              "(a TVM RPC server busy with another client, or not a TVM RPC endpoint)") from None
        if struct.unpack("<i", head)[0] != TRACKER_MAGIC:
            raise RemoteError(f"{host}:{port}: not a TVM RPC server or tracker (it answered something else)")
        return "tracker", sock
    except BaseException:
        sock.close()
        raise


def _last_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else type(e).__name__
    return re.sub(r"^(?:tvm\.error\.)?(?:RPCError|TVMError|InternalError|ValueError|RuntimeError): ", "", text)


@dataclass
class Remote:
    """An open RPC session on a remote machine."""

    session: Any
    address: str                     # where the session runs: HOST:PORT of the server
    via: str | None = None           # the tracker that handed it out, if any
    key: str | None = None
    info: dict | None = field(default=None)  # what an optc-run server says about itself; None for TVM's

    def describe(self) -> str:
        """``HOST:PORT (optc-run server, aarch64, 4 CPUs)``, plus the tracker it came through."""
        if self.info:
            what = f"optc-run server, {self.info.get('arch')}, {self.info.get('cpus')} CPUs"
        else:
            what = "TVM RPC server"
        via = f" via tracker {self.via} (key {self.key!r})" if self.via else ""
        return f"{self.address} ({what}){via}"

    def to_json(self) -> dict:
        out = {"address": self.address, "tracker": self.via, "key": self.key,
               "server": "optc-run" if self.info else "tvm"}
        if self.info:
            out.update({k: self.info.get(k) for k in ("arch", "cpus", "tvm")})
        return out

    def function(self, name: str):
        """A global function of the remote runtime, or None when it has none by that name."""
        try:
            return self.session.get_function(name)
        except Exception:  # noqa: BLE001  (AttributeError over RPC: no such function)
            return None

    def threads(self) -> int | None:
        f = self.function("runtime.NumThreads")
        return int(f()) if f is not None else None

    def set_threads(self, n: int) -> int:
        """Use ``n`` worker threads on the board (call before anything runs there); returns the
        count in effect. An optc-run server sizes the session's pool to ``n``; TVM's own server
        can only lower its default (``runtime.config_threadpool``, big cores first)."""
        cpus = (self.info or {}).get("cpus")
        if n < 1 or (isinstance(cpus, int) and n > cpus):
            raise RemoteError(f"--threads must be between 1 and {cpus} (the CPUs of the board {self.address}), got {n}")
        f = self.function("optc.rpc.set_threads")
        if f is not None:
            got = int(f(int(n)))
        else:
            config = self.function("runtime.config_threadpool")
            if config is None:
                raise RemoteError(f"{self.address}: its TVM runtime cannot set the thread count")
            config(1, int(n))
            got = self.threads()
        if got != n:
            raise RemoteError(f"--threads {n}: the TVM runtime on {self.address} runs at most {got} threads "
                              "(start its server with TVM_NUM_THREADS set higher)")
        return got

    def load(self, folder: str | os.PathLike) -> "RemoteModel":
        return RemoteModel(self, folder)

    def close(self) -> None:
        """End the session now (the server then serves its next client); its models stop working."""
        if self.session is not None:
            try:
                self.session._sess["CloseRPCConnection"]()
            except Exception:  # noqa: BLE001  (already closed, or the link is gone)
                pass
            self.session = None

    def __enter__(self) -> "Remote":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(remote: str, key: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Remote:
    """An RPC session on ``remote`` (``HOST:PORT`` of an RPC server, or of a tracker with ``key``
    naming the board), each step bounded by ``timeout`` seconds."""
    host, port = parse_address(remote)
    kind, tracker = probe(host, port, timeout)
    via = None
    if kind == "tracker":
        via = f"{host}:{port}"
        try:
            host, port, match = _request(tracker, via, key, timeout)
        finally:
            tracker.close()
        try:  # the board as the tracker knows it: reachable from here, and free?
            probe(host, port, timeout)
        except RemoteError as e:
            raise RemoteError(f"tracker {via} handed out {key!r} at {e}") from None
    else:
        match = key or ""
    rpc = _rpc()
    try:
        sess = rpc.connect(host, port, key=match)
    except Exception as e:  # noqa: BLE001
        why = _last_line(e)
        if "cannot find server that matches key" in why:
            why = f"it does not serve key {match!r}" + ("" if key else " (give the server's key with --rpc-key)")
        raise RemoteError(f"{host}:{port}: cannot open an RPC session ({why})") from None
    r = Remote(sess, f"{host}:{port}", via, key)
    f = r.function("optc.rpc.info")
    if f is not None:
        try:
            r.info = json.loads(str(f()))
        except ValueError:
            r.info = None
    return r


def _request(sock: socket.socket, where: str, key: str | None, timeout: float) -> tuple[str, int, str]:
    """Ask the tracker on ``sock`` for a board registered under ``key``: ``(host, port, matchkey)``."""
    try:
        _send_json(sock, [TRACKER_SUMMARY])
        reply = _recv_json(sock)
        summary = reply[1] if isinstance(reply, list) and reply and reply[0] == TRACKER_SUCCESS else {}
        keys = sorted({str(s.get("key", "")).split(":", 1)[-1] for s in summary.get("server_info", [])
                       if isinstance(s, dict)})
        shown = ", ".join(repr(k) for k in keys) or "none"
        if not key:
            raise RemoteError(f"{where} is a TVM RPC tracker: name the board with --rpc-key KEY (registered: {shown})")
        if key not in keys:
            raise RemoteError(f"tracker {where} has no board registered with key {key!r} (registered: {shown})")
        _send_json(sock, [TRACKER_REQUEST, key, "", 1])
        reply = _recv_json(sock)
    except socket.timeout:
        raise RemoteError(f"tracker {where}: no board with key {key!r} became free within {timeout:g} s") from None
    except (OSError, ValueError, struct.error) as e:
        raise RemoteError(f"tracker {where}: the conversation broke off ({e})") from None
    if not (isinstance(reply, list) and len(reply) == 2 and reply[0] == TRACKER_SUCCESS and len(reply[1]) == 3):
        raise RemoteError(f"tracker {where}: unexpected answer {str(reply)[:200]}")
    host, port, match = reply[1]
    return str(host), int(port), str(match)


def _rpc():
    from ..codegen import runtime  # noqa: F401  (imports TVM without torch)
    from tvm import rpc

    return rpc


class RemoteModel:
    """An artifact's library loaded into a Relax VM on the remote machine."""

    def __init__(self, remote: Remote, folder: str | os.PathLike):
        from ..codegen.artifact import read_manifest, verify_files
        from ..codegen.signature import Signature
        from .toolchain import elf_arch

        self.remote = remote
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        verify_files(self.folder, manifest)
        self.manifest = manifest
        self.signature = Signature.from_json(manifest)
        target = self.signature.target or {}
        if target.get("kind") not in (None, "cpu"):
            raise RemoteError(f"{self.folder} is built for {target.get('name')} ({target.get('kind')}); "
                              "optc bench --remote runs CPU artifacts")
        library = self.folder / manifest["library"]
        arch = target.get("arch") or elf_arch(library)
        info = remote.info or {}
        if arch and info.get("arch") and normalize_arch(arch) != info["arch"]:
            raise RemoteError(f"{self.folder} is built for {target.get('name', arch)} ({arch}); "
                              f"the remote {remote.address} is {info['arch']}")
        built, serving = (manifest.get("versions") or {}).get("tvm"), info.get("tvm")
        if built and serving not in (None, "unknown", built):
            raise RemoteError(f"{self.folder} was built with TVM {built}; the server on {remote.address} runs TVM "
                              f"{serving}: serve it with the runner the artifact ships (./optc-run --rpc-server)")
        sess = remote.session
        try:
            sess.upload(str(library), "model.so")
        except Exception as e:  # noqa: BLE001
            raise RemoteError(f"{remote.address}: uploading {library.name} failed ({_last_line(e)})") from None
        try:
            lib = sess.load_module("model.so")
        except Exception as e:  # noqa: BLE001
            hint = "" if info else f" (the artifact is built for {arch}: is the remote an {arch} machine?)"
            raise RemoteError(f"{remote.address}: cannot load {library.name}: {_last_line(e)}{hint}") from None
        from tvm import relax

        self.device = sess.cpu()
        try:
            self.vm = relax.VirtualMachine(lib, self.device)
            embedded = str(self.vm["optc_signature"]())
        except Exception as e:  # noqa: BLE001
            raise RemoteError(f"{remote.address}: {library.name} is not a compiled optc module there "
                              f"({_last_line(e)})") from None
        if Signature.loads(embedded).to_json() != self.signature.to_json():
            raise RemoteError(f"{self.folder}: the manifest's signature does not match the compiled library (edited?): "
                              "recompile it")
        check = remote.function("optc.rpc.check_host")
        problem = str(check(embedded)) if check is not None else ""
        if problem:
            raise RemoteError(f"{remote.address}: {problem}")

    def _set_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        import tvm

        from ..codegen.storage import to_storage

        self.signature.check(inputs)
        tensors = []
        for s in self.signature.inputs:
            a = np.asarray(to_storage(np.asarray(inputs[s.name]), s.dtype))
            if not a.dtype.isnative:  # TVM takes C-contiguous arrays in the machine's byte order
                a = a.astype(a.dtype.newbyteorder("="))
            a = np.require(a, requirements="C")
            try:
                t = tvm.runtime.tensor(a, self.device)
            except Exception:  # noqa: BLE001  (e.g. uint64, which tvm.runtime.tensor refuses)
                t = tvm.runtime.empty(a.shape, str(a.dtype), self.device)
                t.copyfrom(a)
            tensors.append(t)
        self.vm.set_input("main", *tensors)

    def _invoke(self) -> None:
        try:
            self.vm.invoke_stateful("main")
        except Exception as e:  # noqa: BLE001
            raise RemoteError(f"the compiled model failed on {self.remote.address}: {_last_line(e)}") from None

    def _outputs(self) -> dict[str, np.ndarray]:
        from ..codegen.storage import from_storage

        res = self.vm.get_outputs("main")
        if not isinstance(res, tuple):
            res = (res,)
        if len(res) != len(self.signature.outputs):
            raise RemoteError(f"the module returned {len(res)} outputs, the signature declares "
                              f"{len(self.signature.outputs)}")
        return {s.name: from_storage(r.numpy(), s.dtype) for s, r in zip(self.signature.outputs, res)}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on the board; numpy outputs keyed by output name."""
        self._set_inputs(inputs)
        self._invoke()
        return self._outputs()

    __call__ = run

    def time(self, inputs: Mapping[str, np.ndarray], repeat: int, warmup: int = 3) -> list[float]:
        """Milliseconds of ``repeat`` runs timed on the board, after ``warmup`` untimed ones."""
        self._set_inputs(inputs)
        for _ in range(max(1, warmup)):  # the first call also surfaces the model's own errors
            self._invoke()
        try:
            timer = self.vm.time_evaluator("invoke_stateful", self.device, number=1, repeat=int(repeat))
            return [float(t) * 1e3 for t in timer("main").results]
        except Exception as e:  # noqa: BLE001
            raise RemoteError(f"timing on {self.remote.address} failed: {_last_line(e)}") from None


def run_remote(folder: str | os.PathLike, inputs: Mapping[str, np.ndarray], remote: str, key: str | None = None,
               timeout: float = DEFAULT_TIMEOUT) -> dict[str, np.ndarray]:
    """Run the artifact ``folder`` once on ``remote`` (``HOST:PORT``; a tracker with ``key``)."""
    with connect(remote, key, timeout) as r:
        return r.load(folder).run(inputs)
