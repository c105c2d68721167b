"""Unlabeled-text augmentation for distillation (TinyBERT's data augmentation, simplified to need
no tokenizer or masked LM): new token-id inputs made from the calibration batches, which the
teacher labels on the fly, so a few hundred calibration sentences give the student many more
distinct inputs than it can memorize.

Two transformations of a mini-batch ``[rows, seq]`` with an attention mask:

* **splice**: each row is joined with another row of the batch — the first row's tokens without
  its last one, then the second's without its first (``[CLS] a [SEP]`` + ``[CLS] b [SEP]`` ->
  ``[CLS] a b [SEP]``), up to ``max_length``: inputs as long as documents from single sentences;
* **replace**: every inner token (not a row's first or last) is swapped with probability ``p`` for
  a token drawn from the calibration text's own tokens (so the vocabulary distribution stays).

Inputs other than the ids and the mask that are ``[rows, seq]`` (token type ids) are spliced the
same way; anything else passes through unchanged.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def token_input(feed: Mapping[str, np.ndarray]) -> tuple[str, str] | None:
    """(ids name, mask name) of a token-id model's inputs, or None when the inputs are not that."""
    mask = [k for k, a in feed.items() if "mask" in k.lower() and np.ndim(a) == 2]
    ids = [k for k, a in feed.items() if "input_ids" in k.lower() and np.ndim(a) == 2
           and np.issubdtype(np.asarray(a).dtype, np.integer)]
    if len(mask) != 1 or len(ids) != 1 or np.shape(feed[mask[0]]) != np.shape(feed[ids[0]]):
        return None
    return ids[0], mask[0]


def token_pool(batches: list[Mapping[str, np.ndarray]], names: tuple[str, str]) -> np.ndarray:
    """The inner tokens (not a row's first or last) of every batch: what replacements draw from."""
    ids, mask = names
    pool = []
    for b in batches:
        for row, m in zip(np.asarray(b[ids]), np.asarray(b[mask])):
            n = int(np.count_nonzero(m))
            pool.append(row[1:n - 1])
    return np.concatenate(pool) if pool else np.zeros(0, np.int64)


def augment(feed: Mapping[str, np.ndarray], names: tuple[str, str], pool: np.ndarray, rng: np.random.Generator,
            replace: float = 0.1, splice: float = 0.5, max_length: int = 128) -> dict[str, np.ndarray]:
    """A new mini-batch from ``feed`` (see the module docstring)."""
    ids, mask = names
    m = np.asarray(feed[mask])
    rows, seq = m.shape
    lengths = np.count_nonzero(m, axis=1)
    paired = [k for k, a in feed.items() if np.ndim(a) == 2 and np.shape(a) == (rows, seq) and k != mask]
    out_rows: dict[str, list[np.ndarray]] = {k: [] for k in paired}
    shift = int(rng.integers(1, rows)) if rows > 1 else 0  # every row's partner is another row
    for r in range(rows):
        n = int(lengths[r])
        for k in paired:
            out_rows[k].append(np.asarray(feed[k])[r, :n])
        other = (r + shift) % rows
        if other != r and rng.random() < splice and n > 1 and lengths[other] > 1:
            n2 = int(lengths[other])
            for k in paired:
                a = out_rows[k][-1]
                joined = np.concatenate([a[:-1], np.asarray(feed[k])[other, 1:n2]])
                if joined.size > max_length:  # keep the closing token
                    joined = np.concatenate([joined[:max_length - 1], a[-1:]])
                out_rows[k][-1] = joined
    width = max(len(x) for x in out_rows[ids])
    out = dict(feed)
    for k in paired:
        arr = np.zeros((rows, width), np.asarray(feed[k]).dtype)
        for r, x in enumerate(out_rows[k]):
            arr[r, :len(x)] = x
        out[k] = arr
    new_mask = np.zeros((rows, width), m.dtype)
    for r, x in enumerate(out_rows[ids]):
        new_mask[r, :len(x)] = 1
    out[mask] = new_mask
    if replace > 0 and pool.size:
        a = out[ids]
        inner = new_mask.astype(bool)
        inner[:, 0] = False
        last = new_mask.sum(axis=1) - 1
        inner[np.arange(rows), np.maximum(last, 0)] = False
        hit = inner & (rng.random(a.shape) < replace)
        a = a.copy()
        a[hit] = pool[rng.integers(0, pool.size, int(hit.sum()))]
        out[ids] = a
    return out
