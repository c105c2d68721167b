"""ONNX backend node tests through an arm64 ``CompiledBackend`` (``-m arm64``): each model is
cross-compiled for ``arm64`` and run by the native runner under qemu-aarch64.

The sample: the ops transformer graphs use (``FAST_SAMPLE``) plus a fixed pseudo-random tenth of
the rest of the suite (by CRC32 of the test name, so it is the same on every machine) — about 260
tests, 200+ of which run (the others are the same skips as on x86: unsupported features).
"""

from __future__ import annotations

import shutil
import zlib

import onnx.backend.test
import pytest

from test_compiled_backend import FAST_SAMPLE, _SkipUnsupported, _suite

pytestmark = [pytest.mark.arm64,
              pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                                 reason="needs aarch64-linux-gnu-g++ and qemu-aarch64 (scripts/setup.sh installs them)")]


class _Arm64Backend(_SkipUnsupported):
    target = "arm64"


def _sample() -> list[str]:
    names = set()
    for cls in onnx.backend.test.BackendTest(_Arm64Backend, __name__).test_cases.values():
        names.update(a[: -len("_cpu")] for a in vars(cls) if a.startswith("test_") and a.endswith("_cpu"))
    return sorted(set(FAST_SAMPLE) | {n for n in names if zlib.crc32(n.encode()) % 10 == 0})


SAMPLE = _sample()
globals().update(_suite(SAMPLE, "Arm64", backend=_Arm64Backend, module=__name__))
