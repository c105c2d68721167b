"""Token generation with a compiled decoder: prefill once, then one decode step per token.

A decoder artifact (``ir/decoder.py``, ``codegen/build.py``) has two functions: ``main`` runs the
prompt and returns the logits and the KV cache, ``decode`` takes one token and the cache and
returns the next logits and the cache one longer. The cache stays in device tensors between steps
(each step's outputs are the next step's inputs, never copied through numpy); only the last
position's logits come back to pick the next token. ``generate`` runs one sequence;
``generate_batch`` runs several prompts at once, left-padded, through the ``decode_batch`` step a
decoder with an attention mask also has. Nothing here imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..ir.errors import InvalidValueError
from ..ir.decoder import INPUT_IDS, MASK, POSITIONS, step_inputs
from .signature import ArtifactError


@dataclass
class Generation:
    """What one ``generate`` call produced, and how fast."""

    prompt: list[int]
    tokens: list[int] = field(default_factory=list)  # the new tokens
    prefill_s: float = 0.0  # the prompt's forward pass
    decode_s: float = 0.0  # every decode step together
    stopped: str = "length"  # "length" or "stop token"
    text: str | None = None  # the new tokens decoded, when a tokenizer was used

    @property
    def prefill_tokens_per_s(self) -> float:
        return len(self.prompt) / self.prefill_s if self.prefill_s else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second of the decode steps (the first new token comes from the prefill)."""
        steps = max(len(self.tokens) - 1, 0)
        return steps / self.decode_s if self.decode_s and steps else float("nan")


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked, as Hugging Face's ``generate`` picks it: the logits of every
    token already in the sequence (prompt included) divided by ``repetition_penalty`` (multiplied
    where negative), then greedy (temperature 0), or sampled from the softmax of
    ``logits / temperature`` restricted to the ``top_k`` most likely tokens (0: all) and then to
    the fewest most likely tokens whose probability adds up to ``top_p`` (nucleus sampling)."""

    temperature: float = 0.0
    top_k: int = 0
    seed: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if not (self.temperature >= 0.0 and np.isfinite(self.temperature)):
            raise InvalidValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidValueError(f"top-k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidValueError(f"top-p must be in (0, 1], got {self.top_p}")
        if not (self.repetition_penalty > 0.0 and np.isfinite(self.repetition_penalty)):
            raise InvalidValueError(f"repetition penalty must be a finite number > 0, got {self.repetition_penalty}")

    def scores(self, logits: np.ndarray, seen: Sequence[int] = ()) -> np.ndarray:
        """The logits the pick is made from (float64; -inf for tokens that cannot be sampled)."""
        z = logits.astype(np.float64)
        if self.repetition_penalty != 1.0 and len(seen):
            ids = np.unique(np.asarray(seen, dtype=np.int64))
            z[ids] = np.where(z[ids] < 0, z[ids] * self.repetition_penalty, z[ids] / self.repetition_penalty)
        if self.temperature == 0.0:
            return z
        z /= self.temperature
        if 0 < self.top_k < z.size:
            z[z < np.partition(z, -self.top_k)[-self.top_k]] = -np.inf
        if self.top_p < 1.0:
            order = np.argsort(z, kind="stable")  # ascending, as HF's TopPLogitsWarper
            p = np.exp(z[order] - z[order[-1]])
            drop = np.cumsum(p / p.sum()) <= 1.0 - self.top_p
            drop[-1] = False  # the most likely token always stays
            z[order[drop]] = -np.inf
        return z

    def picker(self) -> Callable[[np.ndarray, Sequence[int]], int]:
        """``pick(logits, seen)``: the next token after the tokens ``seen``."""
        if self.temperature == 0.0:
            return lambda logits, seen=(): int(np.argmax(self.scores(logits, seen)))
        rng = np.random.default_rng(self.seed)

        def pick(logits: np.ndarray, seen: Sequence[int] = ()) -> int:
            z = self.scores(logits, seen)
            p = np.exp(z - z.max())
            return int(rng.choice(z.size, p=p / p.sum()))

        return pick


class TextStream:
    """The text of a growing list of generated tokens, for streaming: reported only where it is
    stable — never while a character's bytes are still coming (byte-level BPE splits a Chinese
    character or an emoji over several tokens; decoded alone, each is U+FFFD) and only as an
    extension of what was reported before, so a printer can print the new part and never take
    anything back."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.text = ""  # what was reported so far

    def _decode(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def push(self, token: int) -> str | None:
        """The text with ``token``, or None while it is not yet stable (or did not grow)."""
        self.tokens.append(token)
        text = self._decode()
        if text == self.text or text.endswith("\ufffd") or not text.startswith(self.text):
            return None
        self.text = text
        return text

    def finish(self) -> str | None:
        """The whole text if it differs from the last report (generation stopped mid-character)."""
        text = self._decode()
        if text == self.text:
            return None
        self.text = text
        return text


class Generator:
    """Runs a compiled decoder (a ``runtime.CompiledModel`` whose signature has a KV cache). A
    step that also takes ``attention_mask`` / ``position_ids`` (optimum's exports) gets them:
    every position a token, positions counting from the prompt's first."""

    def __init__(self, model):
        cache = model.signature.kv_cache
        if cache is None or "decode" not in model.signature.entries:
            raise ArtifactError("this compiled model is not a decoder with a KV cache (compile a causal language "
                                "model exported with its cache: optc.frontend.pytorch.export_decoder, or an ONNX "
                                "export with past_key_values inputs)")
        self.prefill = model
        self.decode = model.step("decode")
        present_of = {past: present for past, present in cache["pairs"]}
        outs = {s.name: i for i, s in enumerate(self.prefill.outputs)}
        self.logits = outs["logits"]
        # decode's inputs, in order: each past tensor is the previous step's output of the same
        # present name (main and decode return them in the same order); the ids, mask and
        # positions are made for each step (ir/decoder.py step_inputs)
        if [s.name for s in self.decode.outputs] != list(outs):
            raise ArtifactError("the decode step's outputs are not the prefill's (compiled by another optc?)")
        made = (INPUT_IDS, MASK, POSITIONS)
        for step, takes, allowed in (("prefill", self.prefill.inputs, made), ("decode", self.decode.inputs, (*made, *present_of))):
            if any(s.name not in allowed for s in takes) or INPUT_IDS not in [s.name for s in takes]:
                raise ArtifactError(f"the {step} step takes inputs other than input_ids, {MASK}, {POSITIONS}"
                                    f"{' and the cache' if step == 'decode' else ''}: {', '.join(s.name for s in takes)}")
        self.feed = [outs[present_of[s.name]] if s.name in present_of else s.name for s in self.decode.inputs]
        self.prefill_takes = {s.name: s.dtype.numpy for s in self.prefill.inputs}
        self.decode_takes = {s.name: s.dtype.numpy for s in self.decode.inputs if s.name in made}
        # a decoder with an attention mask also has a step for a batch of rows (codegen/build.py)
        self.decode_batch = model.step("decode_batch") if "decode_batch" in model.signature.entries else None
        if self.decode_batch is not None:
            if [s.name for s in self.decode_batch.inputs] != [s.name for s in self.decode.inputs]:
                raise ArtifactError("the batched decode step's inputs are not the decode step's")
            self.batch_takes = {s.name: s.dtype.numpy for s in self.decode_batch.inputs if s.name in made}

    def generate(self, prompt: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(), *,
                 stop_tokens: Sequence[int] = (), on_token: Callable[[int], None] | None = None) -> Generation:
        """Generate up to ``max_new_tokens`` after the token ids ``prompt``, stopping early at a
        token of ``stop_tokens`` (included in the result). ``on_token`` sees each new token as it
        is picked (streaming)."""
        ids = np.asarray(prompt, dtype=np.int64).reshape(1, -1)
        if ids.size == 0:
            raise InvalidValueError("the prompt is empty: generation needs at least one token")
        if max_new_tokens < 1:
            raise InvalidValueError(f"max-new-tokens must be >= 1, got {max_new_tokens}")
        first = step_inputs(self.prefill_takes, ids, 0)
        self.prefill.check(first)
        out = Generation([int(t) for t in ids[0]])
        pick, stop = sampling.picker(), set(int(t) for t in stop_tokens)
        t0 = time.perf_counter()
        state = self.prefill.run_tensors([self.prefill._tensor(first[s.name]) for s in self.prefill.inputs])
        seen = list(out.prompt)  # what the repetition penalty looks at
        token = pick(state[self.logits].numpy()[0, -1], seen)
        out.prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        past = ids.shape[1]
        while True:
            out.tokens.append(token)
            seen.append(token)
            if on_token is not None:
                on_token(token)
            if token in stop:
                out.stopped = "stop token"
                break
            if len(out.tokens) >= max_new_tokens:
                break
            made = step_inputs(self.decode_takes, np.array([[token]], dtype=np.int64), past)
            state = self.decode.run_tensors([state[f] if isinstance(f, int) else self.decode._tensor(made[f])
                                             for f in self.feed])
            past += 1
            token = pick(state[self.logits].numpy()[0, -1], seen)
        out.decode_s = time.perf_counter() - t0
        return out

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling = Sampling(),
                       *, stop_tokens: Sequence[int] = (), pad_token: int = 0) -> list[Generation]:
        """Generate after each of ``prompts`` at once: the prompts left-padded to the longest
        (``pad_token``; the padding masked out, and each row's positions counting from its own
        first token, as Hugging Face's batched ``generate`` does), then one decode step a token for
        every row. A row ends at a stop token; the batch runs until every row ended or has
        ``max_new_tokens``. The times are the batch's. Needs a decoder whose steps take
        ``attention_mask`` and ``position_ids`` (``export_decoder(attention_mask=True)``, or an
        optimum-style ONNX export)."""
        if self.decode_batch is None or not {MASK, POSITIONS} <= set(self.prefill_takes):
            raise ArtifactError("batched generation needs a decoder whose steps take attention_mask and position_ids "
                                "(export_decoder(model, attention_mask=True), or an ONNX export with both inputs)")
        rows = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
        if not rows:
            raise InvalidValueError("no prompts to generate from")
        for i, r in enumerate(rows):
            if r.size == 0:
                raise InvalidValueError(f"prompt {i + 1} is empty: generation needs at least one token")
        if max_new_tokens < 1:
            raise InvalidValueError(f"max-new-tokens must be >= 1, got {max_new_tokens}")
        width = max(r.size for r in rows)
        ids = np.full((len(rows), width), pad_token, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, width - r.size:], mask[i, width - r.size:] = r, 1
        positions = np.where(mask == 1, mask.cumsum(1) - 1, 1)  # Hugging Face's value under the padding
        first = self._typed(self.prefill_takes, {INPUT_IDS: ids, MASK: mask, POSITIONS: positions})
        self.prefill.check(first)
        outs = [Generation([int(t) for t in r]) for r in rows]
        seen = [list(o.prompt) for o in outs]  # what the repetition penalty looks at, row by row
        pick, stop = sampling.picker(), set(int(t) for t in stop_tokens)
        t0 = time.perf_counter()
        state = self.prefill.run_tensors([self.prefill._tensor(first[s.name]) for s in self.prefill.inputs])
        logits = state[self.logits].numpy()[:, -1]
        tokens = [pick(logits[i], seen[i]) for i in range(len(rows))]
        prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        lengths = np.array([r.size for r in rows], dtype=np.int64)  # each row's tokens so far
        batch = list(range(len(rows)))  # the rows still running, in the order the tensors hold them
        while True:
            for i, token in zip(batch, tokens):
                outs[i].tokens.append(token)
                seen[i].append(token)
                if token in stop:
                    outs[i].stopped = "stop token"
            keep = [j for j, i in enumerate(batch) if outs[i].stopped != "stop token" and len(outs[i].tokens) < max_new_tokens]
            if not keep:
                break
            if len(keep) < len(batch):  # ended rows leave the batch (and their cache rows with them)
                state = self._keep_rows(state, keep)
                batch, tokens, mask, lengths = [batch[j] for j in keep], [tokens[j] for j in keep], mask[keep], lengths[keep]
            # the last row left runs the one-sequence step (its matrix-vector kernels)
            step, takes = (self.decode, self.decode_takes) if len(batch) == 1 else (self.decode_batch, self.batch_takes)
            mask = np.concatenate([mask, np.ones((len(batch), 1), dtype=np.int64)], axis=1)
            made = self._typed(takes, {INPUT_IDS: np.array(tokens, dtype=np.int64)[:, None], MASK: mask,
                                       POSITIONS: lengths[:, None]})
            state = step.run_tensors([state[f] if isinstance(f, int) else step._tensor(made[f]) for f in self.feed])
            lengths += 1
            logits = state[self.logits].numpy()[:, -1]
            tokens = [pick(logits[j], seen[i]) for j, i in enumerate(batch)]
        decode_s = time.perf_counter() - t0
        for o in outs:
            o.prefill_s, o.decode_s = prefill_s, decode_s
        return outs

    def _keep_rows(self, state: list, keep: list[int]) -> dict:
        """The cache tensors of ``state`` cut to the batch rows ``keep`` (a copy through the host:
        once per row that ends, not per step)."""
        cache = [f for f in self.feed if isinstance(f, int)]
        return {f: self.decode_batch._tensor(np.ascontiguousarray(state[f].numpy()[keep])) for f in cache}

    @staticmethod
    def _typed(takes: dict, arrays: dict) -> dict[str, np.ndarray]:
        """The arrays a step takes (``takes``: name -> dtype), in its dtypes."""
        return {name: np.ascontiguousarray(arrays[name], dtype=dtype) for name, dtype in takes.items()}
