"""``pip install .`` (a real wheel, not the editable install) gives a working optc.

The wheel is built offline from a copy of the checkout (``pip wheel --no-build-isolation``, so
the build writes nothing into the repository), then:

* its file list must hold every Python file and every data file (``package-data`` patterns of
  pyproject.toml) under the folders ``[tool.setuptools] package-dir`` maps into ``optc``;
* (slow) installed with ``--no-deps`` into a fresh venv that sees the system's site-packages
  (TVM, numpy, onnx), it must import from the venv — not from the source tree, nor through the
  editable install of the system site-packages — and ``optc compile`` / ``optc run`` from a
  folder outside the repository must reproduce numpy's result.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
ROOTS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
NEVER_SHIPPED = {"__pycache__", "build", "CMakeFiles"}  # folders whose files stay out of the wheel


def _checkout_files() -> list[str]:
    """The files a fresh checkout with the current edits would have: tracked and untracked but
    not ignored (no build outputs, caches, models)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: the roots and the build files
        keep = ["pyproject.toml", "setup.py", "README.md"]
        return keep + [str(p.relative_to(REPO)) for r in ROOTS.values() for p in (REPO / r).rglob("*")
                       if p.is_file() and not NEVER_SHIPPED.intersection(p.relative_to(REPO).parts)]
    return [f for f in out.decode().split("\0") if f]


def _copy_build_sources(dest: Path) -> None:
    """Copy only what the build reads: the build files and the mapped roots."""
    roots = tuple(r.rstrip("/") + "/" for r in ROOTS.values())
    for rel in _checkout_files():
        if not (rel in ("pyproject.toml", "setup.py", "README.md") or rel.startswith(roots)):
            continue
        src = REPO / rel
        if src.is_file():  # tracked files deleted in the work tree are listed too
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the source copy it was built from)."""
    base = tmp_path_factory.mktemp("wheel")
    src, dist = base / "src", base / "dist"
    _copy_build_sources(src)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                           "--no-index", "--disable-pip-version-check", "-q", "-w", str(dist)],
                          cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shutil.rmtree(src / "build", ignore_errors=True)
    (whl,) = dist.glob("optc-*.whl")
    yield whl, src
    shutil.rmtree(base, ignore_errors=True)


def _data_patterns() -> list[str]:
    """package-data patterns as file-name patterns (``**/*.cc`` -> ``*.cc``)."""
    pats = PYPROJECT["tool"]["setuptools"].get("package-data", {}).get("*", [])
    return [p.rsplit("/", 1)[-1] for p in pats]


def _expected_wheel_files(src: Path) -> set[str]:
    """Every .py and data file under the mapped roots, as the wheel names it."""
    data = _data_patterns()
    expected = set()
    for name, folder in ROOTS.items():
        base = src / folder
        for p in base.rglob("*"):
            rel = p.relative_to(base)
            if not p.is_file() or NEVER_SHIPPED.intersection(rel.parts) or any(s.startswith(".") for s in rel.parts):
                continue
            if p.suffix == ".py" or any(fnmatch.fnmatch(p.name, pat) for pat in data):
                expected.add(str(PurePosixPath(*name.split("."), *rel.parts)))
    return expected


def test_wheel_holds_every_module_and_data_file(wheel):
    whl, src = wheel
    names = set(zipfile.ZipFile(whl).namelist())
    expected = _expected_wheel_files(src)
    assert "optc/codegen/lowering/__init__.py" in expected  # the package the old hand-kept list missed
    missing = sorted(expected - names)
    assert not missing, (f"{len(missing)} files under the package roots are not in the wheel (a folder of .py "
                         f"files needs an __init__.py; a data file needs a package-data pattern in "
                         f"pyproject.toml): {missing[:20]}")
    shipped = {n for n in names if not n.startswith("optc-")}
    extra = sorted(shipped - expected)
    assert not extra, f"the wheel holds files that are not in the source roots: {extra[:20]}"
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"optc", f"optc-{PYPROJECT['project']['version']}.dist-info"}, top
    entry = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "optc = optc.cli:main" in entry


def _model(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return w, b


@pytest.mark.slow
def test_installed_wheel_compiles_and_runs_outside_the_repo(wheel, tmp_path):
    whl, _ = wheel
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    # No pip of its own (ensurepip costs seconds): the system's pip, seen through the system
    # site-packages, installs into the venv when run by the venv's interpreter.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH="", PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")

    def run(*cmd, timeout=300):
        proc = subprocess.run([str(c) for c in cmd], cwd=work, env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    run(py, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q", whl)

    # Every optc module comes from the venv, not the checkout nor the system's editable install.
    where = json.loads(run(py, "-c", (
        "import json, sys, sysconfig, optc, optc.cli, optc.codegen.lowering, optc.codegen.schedules, "
        "optc.passes, optc.frontend, optc.targets\n"
        "print(json.dumps({'purelib': sysconfig.get_paths()['purelib'], "
        "'modules': {n: getattr(m, '__file__', None) for n, m in sys.modules.items() "
        "if n == 'optc' or n.startswith('optc.')}}))")).splitlines()[-1])
    purelib = Path(where["purelib"]).resolve()
    assert purelib.is_relative_to(venv.resolve()), where["purelib"]
    outside = {n: f for n, f in where["modules"].items()
               if f and not Path(f).resolve().is_relative_to(purelib / "optc")}
    assert not outside, f"optc modules imported from outside the venv: {outside}"
    assert "optc.codegen.lowering" in where["modules"]

    w, b = _model(work / "mlp.onnx")
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    np.savez(work / "in.npz", x=x)
    optc = venv / "bin" / "optc"
    run(optc, "compile", "mlp.onnx", "-o", "art")
    assert (work / "art").is_dir()
    run(optc, "run", "art", "--inputs", "in.npz", "-o", "out.npz")
    with np.load(work / "out.npz") as out:
        y = out["y"]
    np.testing.assert_allclose(y, np.maximum(x @ w + b, 0), rtol=1e-5, atol=1e-5)
