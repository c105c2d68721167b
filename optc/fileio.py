"""How optc writes files: the one place that decides what may be written, where and how.

The policy (docs/architecture.md, "What optc writes"):

* A command writes only the path it was given with ``-o`` (plus, for an ONNX model with external
  weights, the ``<name>.data`` file beside it that the model names), and temp files beside it.
* Every write is atomic: the content goes to a temp file or folder in the destination's folder
  (``.<name>.optc-<pid>-<random>.tmp``), is flushed to disk (fsync), and is renamed into place;
  a failed or interrupted command leaves the destination as it was.
* Temps of a process that no longer exists are removed by the next write to the same
  destination, so a killed compile leaves nothing behind for long.
* An existing output *file* is replaced (that is what ``-o`` asks for) unless it is a folder.
  An existing output *folder* is replaced only when it is an optc artifact or empty; any other
  folder (the current folder, the folder holding the source model, a home directory) is refused.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator

from .ir.errors import OptcError

_TEMP = re.compile(r"^\.(?P<name>.+)\.optc-(?P<pid>\d+)-[0-9a-f]+\.(?:tmp|old)$")


class OutputError(OptcError):
    """An output path optc refuses to write (a folder it does not own, an odd path)."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def temp_name(dest: Path, kind: str = "tmp") -> Path:
    """A fresh temp path beside ``dest``, named so that stale ones can be recognized."""
    return dest.with_name(f".{dest.name}.optc-{os.getpid()}-{secrets.token_hex(4)}.{kind}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_stale_temps(dest: Path) -> list[Path]:
    """Remove temps beside ``dest`` left by writes to ``dest`` from processes that are gone."""
    removed = []
    try:
        entries = list(dest.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or m.group("name") != dest.name or _alive(int(m.group("pid"))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush a file, or every file in a folder and the folder itself, to disk."""
    if path.is_dir():
        for child in path.iterdir():
            fsync_tree(child)
        _fsync_dir(path)
        return
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _plain_path(path: Path, flag: str) -> Path:
    """Refuse paths whose last part is not a name (``.``, ``..``, ``/``, empty)."""
    if path.name in ("", ".", "..") or str(path).endswith(os.sep):
        raise OutputError(f"{flag} {path}: not a file or folder name")
    return path


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...] = (), flag: str = "-o") -> Path:
    """Validate an output file path before any work is done: a plain name with one of
    ``suffixes``, not an existing folder, in a folder that exists or can be created."""
    path = _plain_path(Path(path), flag)
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputError(f"{flag} {path}: write a file ending in {' or '.join(suffixes)}")
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a folder, expected a file")
    _check_parent(path, flag)
    return path


def is_artifact(folder: Path) -> bool:
    """Whether ``folder`` is an optc artifact folder (what ``optc compile`` may replace)."""
    from .codegen.artifact import FORMAT, MANIFEST

    try:
        import json

        return json.loads((folder / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_output_dir(path: str | os.PathLike, flag: str = "-o") -> Path:
    """Validate an artifact folder path: absent, empty, or an optc artifact — never another
    folder, the current folder or one of its parents."""
    path = _plain_path(Path(path), flag)
    if path.is_symlink():
        raise OutputError(f"{flag} {path}: is a symbolic link; give the real folder")
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"{flag} {path}: exists and is not a folder")
        here = Path.cwd().resolve()
        real = path.resolve()
        if real == here or real in here.parents:
            raise OutputError(f"{flag} {path}: is the current folder or one of its parents")
        if any(path.iterdir()) and not is_artifact(path):
            raise OutputError(f"{flag} {path}: exists and is not an optc artifact folder; "
                              "choose a new folder (optc only replaces its own artifacts)")
    _check_parent(path, flag)
    return path


def _check_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` is a folder we can create entries in (tried
    with a temp folder, removed at once: permission bits do not tell the whole story, e.g. for
    root, read-only mounts or /proc)."""
    parent = path.parent
    for p in [parent, *parent.parents]:
        if p.exists():
            if not p.is_dir():
                raise OutputError(f"{flag} {path}: {p} is not a folder")
            probe = temp_name(p / path.name)
            try:
                probe.mkdir()
                probe.rmdir()
            except OSError as e:
                raise OutputError(f"{flag} {path}: cannot write in {p} ({e.strerror})") from None
            return


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, *, folder: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; on success flush it and rename it onto ``dest`` (a
    folder replaces the old one only after the new one is complete), on failure remove it.

        with atomic_path("out.npz") as tmp:
            np.savez(tmp, ...)
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(dest)
    tmp = temp_name(dest)
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        if folder:
            _swap_folder(tmp, dest)
        else:
            os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        _remove(tmp)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            return False  # kernel or file system without it
        raise OSError(err, os.strerror(err), str(b))
    return True


def _swap_folder(tmp: Path, dest: Path) -> None:
    """Put the folder ``tmp`` at ``dest``. Where the kernel can swap two paths atomically, a
    reader (or a kill) sees the complete old or the complete new folder at every instant;
    elsewhere there is a moment between two renames when ``dest`` is absent."""
    if not dest.exists():
        os.replace(tmp, dest)
        return
    if _exchange(tmp, dest):
        _remove(tmp)  # now the old folder
        return
    old = temp_name(dest, "old")
    os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def atomic_write_with(dest: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(tmp_path)`` then the atomic rename onto ``dest``."""
    with atomic_path(dest) as tmp:
        write(tmp)
    return Path(dest)


def describe_os_error(e: OSError) -> str:
    """An OSError as one line naming the file: ``out/model.so: No space left on device``."""
    what = e.strerror or errno.errorcode.get(e.errno or 0, type(e).__name__)
    names = [n for n in (e.filename, e.filename2) if n]
    return f"{' -> '.join(str(n) for n in names)}: {what}" if names else what
