"""Reading and writing ``.npz`` files of named arrays, safely.

An ``.npz`` is user input: it may be a ``.npy`` by mistake, truncated, hold pickled objects,
big-endian or non-numeric arrays, or a header that claims more elements than the file holds (a
cheap way to make a reader allocate terabytes). Every member's header is read and checked
against the bytes the archive actually stores before any array is allocated, and every problem
is one ``InputsError`` line naming the file and the array.
"""

from __future__ import annotations

import os
import tokenize
import zipfile
from pathlib import Path

import numpy as np

from .ir.errors import OptcError


class InputsError(OptcError):
    """An inputs/outputs file optc cannot read or write as asked."""


def read_npz(path: str | os.PathLike, flag: str = "--inputs") -> dict[str, np.ndarray]:
    """Named arrays from an ``.npz`` file, in native byte order, C-contiguous."""
    path = Path(path)
    if not path.exists():
        raise InputsError(f"{flag} {path}: no such file")
    if path.is_dir():
        raise InputsError(f"{flag} {path}: is a folder, expected an .npz file")
    if not zipfile.is_zipfile(path):
        hint = " (a .npy file: save named inputs with numpy.savez(path, name=array, ...))" if _is_npy(path) else ""
        raise InputsError(f"{flag} {path}: not an .npz file{hint}")
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with zf.open(info) as f:
                    out[name] = _read_member(f, info, f"{flag} {path}: array {name!r}")
    except InputsError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, NotImplementedError) as e:
        raise InputsError(f"{flag} {path}: not a readable .npz file ({' '.join(str(e).split()) or type(e).__name__})") from None
    if not out:
        raise InputsError(f"{flag} {path}: holds no arrays")
    return out


def _is_npy(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(6) == b"\x93NUMPY"
    except OSError:
        return False


def _read_member(f, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    fmt = np.lib.format
    try:
        major, _ = fmt.read_magic(f)
        read_header = {1: fmt.read_array_header_1_0, 2: fmt.read_array_header_2_0}.get(major)
        if read_header is None:
            raise InputsError(f"{where}: unsupported .npy format version {major}")
        shape, fortran, dtype = read_header(f, max_header_size=1 << 16)
    except InputsError:
        raise
    except (ValueError, EOFError, SyntaxError, TypeError, tokenize.TokenError) as e:  # numpy parses the header as Python
        raise InputsError(f"{where}: not a .npy array ({' '.join(str(e).split())[:200]})") from None
    if dtype.hasobject:
        raise InputsError(f"{where}: holds Python objects (dtype {dtype}); optc reads numeric arrays only")
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise InputsError(f"{where}: element type {dtype} is not a number type")
    count = 1
    for d in shape:
        count *= int(d)
    need = count * dtype.itemsize
    stored = info.file_size  # uncompressed member size (the zip reader checks it against the data)
    if need > stored:
        raise InputsError(f"{where}: its header claims {count:,} elements ({need:,} bytes) but the file holds "
                          f"{stored:,} bytes (truncated or corrupt)")
    try:
        data = f.read(need)
    except MemoryError:
        raise InputsError(f"{where}: {need:,} bytes do not fit in memory") from None
    if len(data) != need:
        raise InputsError(f"{where}: truncated ({len(data):,} of {need:,} bytes)")
    arr = np.frombuffer(data, dtype=dtype)
    arr = arr.reshape(shape, order="F" if fortran else "C")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.require(arr, requirements="C")  # not ascontiguousarray: it makes a 0-d array 1-d


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], flag: str = "-o") -> Path:
    """Write named arrays as ``.npz`` atomically (``optc.fileio``)."""
    from .fileio import atomic_path, check_output_file

    path = check_output_file(path, (".npz",), flag)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path
