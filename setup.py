"""Package discovery for the optc distribution (everything else is in pyproject.toml).

``[tool.setuptools] package-dir`` in pyproject.toml maps each top-level source folder to its
import name (``ir/`` -> ``optc.ir``, ...). setuptools' own ``packages.find`` cannot rename
folders, so the packages are found here instead: every folder with an ``__init__.py`` under a
mapped root, found afresh on each build. A new sub-package needs no edit anywhere; a new
top-level folder needs only its ``package-dir`` line. Data files (C++ sources, JSON, ...) are
picked by the ``package-data`` patterns in pyproject.toml.
"""

import tomllib
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# Not packages even if someone puts an __init__.py there.
EXCLUDE = ["tests", "tests.*", "*.tests", "*.tests.*", "build", "build.*", "*.build", "*.build.*"]


def mapped_roots() -> dict[str, str]:
    with open(HERE / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def find_all_packages() -> list[str]:
    packages = []
    for name, folder in mapped_roots().items():
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(str(HERE / folder), exclude=EXCLUDE)]
    return sorted(packages)


if __name__ == "__main__":
    setup(packages=find_all_packages())
