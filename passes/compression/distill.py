"""``distill``: train the compressed graph's remaining weights to reproduce the model it was
compressed from, on the calibration inputs (knowledge distillation, Hinton et al. 2015; the
per-layer hidden-state loss of TinyBERT, Jiao et al. 2020).

The teacher is ``ctx.teacher``: the graph before the pipeline's first lossy pass, kept by the
pass manager. The student is the current graph; only its existing float weights change —
projection weights and biases, normalization scales and shifts (embedding tables with
``embeddings=true``) — never its structure. Training runs the reference interpreter under torch
autograd on CPU (``Interpreter.run_torch`` with the weights as parameters), Adam with a short
warm-up, gradient clipping at norm 1.

Loss, per mini-batch (padded positions excluded through the attention mask):

* final outputs (a decoder's: its logits, not the ``present`` cache it carries to the next step):
  ``cosine`` — mean ``1 - cos`` of each token's vector (and of the mask-weighted
  mean over the sequence, the sentence embedding the fidelity is measured on); ``mse`` — squared
  error relative to the teacher's mean square; ``kl`` — KL(teacher || student) of the softmaxes
  at ``temperature`` (logits). ``auto``: ``kl`` for outputs named like logits, else ``cosine``.
* ``layers`` > 0: plus ``layers`` x the relative squared error of every normalization output the
  two graphs share (by value name and shape: pruning and factorizing keep the residual stream's
  width and its norms' names), averaged over them.

``augment`` > 0 (token-id models): every training batch is re-made each step by splicing rows
and replacing tokens (``augment.py``) and labeled by the teacher on the fly.

Mini-batches (``length_batches``, token-id inputs of a free sequence length): every row of the
calibration sets, sorted by length and cut in order, each batch padded only to its longest row —
random batches of news sentences pad to nearly twice the tokens they hold, and a step costs what
it computes.

Generalization: the calibration sets the fitted passes hold back (``fidelity.held_back``) are
held out (from a single set, one mini-batch in four); the fidelity on it (mean cosine of
the first output, as every lossy pass reports it) is measured every ``eval_every`` steps, the best
weights are kept; after ``patience`` evaluations without improvement training goes on from the
best weights at a third of the rate (``decays`` times), then stops — or at ``steps``, or at the
``minutes`` budget. The pass never returns weights worse on the held-out
batches than the ones it started from.

``lr=auto`` (default): the right rate depends on where the student starts. MiniLM with 40% of
its heads pruned and re-fit (held-out 0.968) got worse after 10 steps at 1e-4 and climbed
steadily at 2e-5 (0.9715 after 530 steps); pruned by magnitude without a re-fit (0.80), 1e-4
beat 3e-5 (0.904 vs 0.899 in 3 minutes). So each of ``LR_CANDIDATES`` trains ``PROBE_STEPS``
steps from the same start on the same batches, and the one best on the held-out batches goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar, Mapping

import numpy as np

from ...ir.graph import Graph
from ...ir.types import DType
from ..base import Pass, PassError, PassResult, option, register_pass
from . import augment
from .fidelity import Fidelity, compare, held_back, is_logits, mask_for, leading_rows, refuse_ruin, trim_padding

NORMALIZATIONS = ("LayerNormalization", "AddLayerNorm", "RMSNormalization", "SkipLayerNormalization")
# (op, input slots holding weights a student may train)
WEIGHT_SLOTS = {"Linear": (1, 2), "QLinear": (4,), "MatMul": (1,), "Gemm": (1, 2), "Add": (0, 1),
                "LayerNormalization": (1, 2), "AddLayerNorm": (2, 3), "RMSNormalization": (1,), "Conv": (1, 2),
                "ConvTranspose": (1, 2)}
EMBEDDING_SLOTS = {"Gather": (0,)}
LOSSES = ("auto", "cosine", "mse", "kl")
LR_CANDIDATES = (1e-4, 3e-5, 1e-5)  # lr=auto probes these
PROBE_STEPS = 20  # steps of each lr=auto probe
LR_DECAY = 1 / 3  # the rate's cut at a plateau (``decays``)
MAX_AUGMENTED_LENGTH = 128  # spliced rows of a model with a symbolic sequence length stop here


# -- data ----------------------------------------------------------------------------------------
def split_batches(sets: list[Mapping[str, np.ndarray]], batch: int) -> list[dict[str, np.ndarray]]:
    """The calibration sets cut into mini-batches of at most ``batch`` rows (along the leading
    axis every input shares; a set whose inputs do not share one stays whole)."""
    out = []
    for feed in sets:
        n = leading_rows(feed)
        if not n or batch <= 0 or n <= batch:
            out.append(dict(feed))
            continue
        for i in range(0, n, batch):
            out.append(trim_padding({k: np.ascontiguousarray(a[i:i + batch]) for k, a in feed.items()}))
    return out


def length_batches(sets: list[Mapping[str, np.ndarray]], batch: int) -> list[dict[str, np.ndarray]]:
    """Mini-batches of at most ``batch`` rows of similar length: every row of the sets (token-id
    inputs with an attention mask, padded on the right), sorted by its length and cut in order,
    each batch padded only to its longest row. Random batches of news sentences pad to nearly
    twice the tokens they hold (MiniLM's 256 calibration sentences: 8,025 tokens in 15,504
    positions; sorted, 8,672), and a training step costs what it computes. Sets of any other
    kind are cut as they are (``split_batches``)."""
    names = augment.token_input(sets[0]) if sets and batch > 0 else None
    if names is None or any(set(s) != set(sets[0]) or augment.token_input(s) != names for s in sets):
        return split_batches(sets, batch)
    mask = names[1]
    rows, pad = [], {}
    for feed in sets:
        m = np.asarray(feed[mask])
        if any(np.shape(a) != m.shape for a in feed.values()):
            return split_batches(sets, batch)  # an input that is not per token (a cache, a scalar)
        for k, a in feed.items():
            if k not in pad and not m.all():
                pad[k] = np.asarray(a)[m == 0][0]  # the tokenizer's own padding value
        used = m != 0
        for r in range(m.shape[0]):
            end = int(np.flatnonzero(used[r])[-1]) + 1 if used[r].any() else 0
            rows.append((end, {k: np.asarray(a)[r, :end] for k, a in feed.items()}))
    rows.sort(key=lambda row: row[0])  # stable: equal lengths keep their order
    out = []
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        width = max(1, chunk[-1][0])
        feed = {}
        for k, a in sets[0].items():
            arr = np.full((len(chunk), width), pad.get(k, 0), np.asarray(a).dtype)
            for j, (end, row) in enumerate(chunk):
                arr[j, :end] = row[k]
            feed[k] = arr
        out.append(feed)
    return out


def held_out_split(sets: list[Mapping[str, np.ndarray]], batch: int,
                   cut=split_batches) -> tuple[list[dict], list[dict]]:
    """(training, held-out) mini-batches (made by ``cut``): the calibration sets every fitted
    pass holds back (``fidelity.held_back``) are held out here too, so that early stopping is
    measured on inputs nothing was fitted to; from a single set, every fourth mini-batch (at
    least one)."""
    if len(sets) >= 2:
        fit, held = held_back(sets)
        return cut(fit, batch), cut(held, batch)
    batches = cut(sets, batch)
    if len(batches) < 2:
        raise PassError("distill: needs at least 2 batches of calibration inputs (one is held out for early "
                        f"stopping), got {len(batches)} — give more calibration data or a smaller batch=")
    held = set(range(3, len(batches), 4)) or {len(batches) - 1}
    return ([b for i, b in enumerate(batches) if i not in held], [b for i, b in enumerate(batches) if i in held])


# -- what trains ---------------------------------------------------------------------------------
def trainable_weights(graph: Graph, embeddings: bool = False) -> list[str]:
    """Float constants the student may train: every use is a weight slot of a projection or a
    normalization (``embeddings``: also the table of a ``Gather``); scalars and shapes never."""
    slots = dict(WEIGHT_SLOTS, **(EMBEDDING_SLOTS if embeddings else {}))
    names = []
    for name, v in graph.constants.items():
        if v.dtype is not DType.FLOAT32 or v.const is None or v.const.size < 2 or v in graph.outputs:
            continue
        uses = list(v.uses)
        if uses and all(i in slots.get(n.op, ()) for n, i in uses):
            names.append(name)
    return names


def shared_hidden_states(teacher: Graph, student: Graph) -> list[str]:
    """Normalization outputs both graphs compute, by value name and shape (the layer map)."""
    def norms(g: Graph) -> dict[str, tuple]:
        return {n.outputs[0].name: n.outputs[0].shape for n in g.nodes if n.op in NORMALIZATIONS}

    t, s = norms(teacher), norms(student)
    outputs = set(student.output_names())
    return [name for name, shape in s.items() if t.get(name) == shape and name not in outputs]


# -- losses --------------------------------------------------------------------------------------
def _weights_for(mask, shape):
    import torch

    if mask is None or len(shape) < 3:
        return None
    return torch.from_numpy(mask).reshape(tuple(mask.shape) + (1,) * (len(shape) - 3))


def cosine_loss(s, t, mask):
    """Mean ``1 - cos`` over the token vectors, plus the same for the mask-weighted mean vector."""
    import torch

    cos = torch.nn.functional.cosine_similarity(s, t, dim=-1, eps=1e-8)
    w = _weights_for(mask, s.shape)
    if w is None:
        return (1 - cos).mean()
    w = w.squeeze(-1) if w.dim() == cos.dim() + 1 else w
    tokens = ((1 - cos) * w).sum() / w.sum().clamp_min(1)
    wp = w.unsqueeze(-1)
    pooled = torch.nn.functional.cosine_similarity((s * wp).sum(1), (t * wp).sum(1), dim=-1, eps=1e-8)
    return tokens + (1 - pooled).mean()


def relative_mse(s, t, mask):
    import torch

    w = _weights_for(mask, s.shape)
    sq, ref = (s - t) ** 2, t ** 2
    if w is not None:
        w = w.unsqueeze(-1) if w.dim() < sq.dim() else w
        sq, ref = sq * w, ref * w
    return sq.sum() / ref.sum().clamp_min(1e-12)


def kl_loss(s, t, temperature: float):
    import torch

    log_p = torch.log_softmax(s / temperature, dim=-1)
    q = torch.softmax(t / temperature, dim=-1)
    return torch.nn.functional.kl_div(log_p, q, reduction="batchmean" if s.dim() == 2 else "sum") * temperature ** 2 / (
        1 if s.dim() == 2 else max(1, int(np.prod(s.shape[:-1]))))


# -- the pass ------------------------------------------------------------------------------------
@register_pass
@dataclass
class Distill(Pass):
    """Train the compressed graph's weights against the model before compression (knowledge
    distillation on the calibration inputs; per-layer hidden states too), with a held-out batch
    for early stopping and a time budget."""

    name: ClassVar[str] = "distill"
    lossy: ClassVar[bool] = True
    uses_teacher: ClassVar[bool] = True
    steps: int = option(0, "most optimizer steps (0: until early stopping or the time budget)")
    minutes: float = option(8.0, "time budget of the training loop, in minutes")
    lr: str = option("auto", "Adam learning rate, or auto: the best of 1e-4, 3e-5 and 1e-5 on the held-out "
                             "batches after a short probe of each (a re-fit student wants a small rate, a "
                             "student pruned without one a large rate)")
    loss: str = option("auto", "final outputs: auto | cosine | mse | kl (auto: kl for logits, else cosine)")
    layers: float = option(1.0, "weight of the per-layer hidden-state loss (0: final outputs only)")
    temperature: float = option(2.0, "kl: softmax temperature")
    batch: int = option(16, "sequences per step")
    eval_every: int = option(10, "steps between held-out evaluations")
    patience: int = option(5, "held-out evaluations without improvement before the rate is cut (or training stops)")
    decays: int = option(2, "times the rate is cut by 3, from the best weights so far, when the held-out fidelity "
                            "stops improving, before training stops")
    embeddings: bool = option(False, "also train embedding tables")
    augment: float = option(0.0, "token-id models: probability of replacing a token in a training batch, which is "
                                 "also spliced with other rows (augment.py; 0: train on the calibration batches as they are)")
    min_cosine: float = option(0.0, "refuse a result whose held-out mean cosine is below this")
    seed: int = option(0, "order of the mini-batches")

    def run(self, graph: Graph, ctx) -> PassResult:
        import torch

        self._check(graph, ctx)
        teacher = ctx.teacher if ctx.teacher is not None else graph.clone()
        _check_compatible(teacher, graph)
        fixed_length = any(v.shape is not None and len(v.shape) == 2 and isinstance(v.shape[1], int)
                           for v in graph.inputs)  # batches of other lengths would not fit it
        cut = split_batches if fixed_length else length_batches
        train, holdout = held_out_split(ctx.calibration, self.batch, cut)
        names = trainable_weights(graph, self.embeddings)
        if not names:
            raise PassError("distill: the graph has no float weights to train")
        hidden = shared_hidden_states(teacher, graph) if self.layers > 0 else []
        outputs = trained_outputs(graph)
        trainer = _Trainer(self, teacher, graph, names, hidden, outputs)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            result = trainer.fit(train, holdout)
        fid = result["after"]
        refuse_ruin(self.name, fid, "held-out calibration")
        if fid.mean_cosine < self.min_cosine:
            raise PassError(f"distill: held-out mean cosine {fid.mean_cosine:.4f} after {result['steps']} steps is below "
                            f"min_cosine={self.min_cosine:g} — compress less, or train longer (minutes=, steps=)")
        for name, array in result.pop("weights").items():  # only now: a refused result leaves the graph as it was
            graph.constants[name].const = array
        params = sum(int(graph.constants[n].const.size) for n in names)
        report = {"steps": result["steps"], "lr": result["lr"], "lr_probes": result["lr_probes"],
                  "lr_decays": result["lr_decays"],
                  "train_seconds": round(result["seconds"], 1), "stopped": result["stopped"],
                  "best_step": result["best_step"], "trained_tensors": len(names), "trained_parameters": params,
                  "layer_map": len(hidden), "train_batches": len(train), "holdout_batches": len(holdout),
                  "fidelity_undistilled": result["before"].as_dict(), "fidelity": fid.as_dict(),
                  "measured_on": f"{len(holdout)} held-out calibration batch(es), not trained on"}
        return PassResult(result["best_step"] > 0, report)

    def learning_rate(self) -> float | None:
        """The ``lr`` option as a number, or None for ``auto``."""
        if str(self.lr).strip().lower() == "auto":
            return None
        try:
            lr = float(self.lr)
        except ValueError:
            lr = float("nan")
        if not lr > 0:
            raise PassError(f"distill: lr must be auto or a number > 0, got {self.lr!r}")
        return lr

    def _check(self, graph: Graph, ctx) -> None:
        if not ctx.calibration:
            raise PassError("distill: needs calibration inputs to train on (--calib FILE)")
        if self.loss not in LOSSES:
            raise PassError(f"distill: loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        self.learning_rate()
        for key in ("minutes", "temperature"):
            if not getattr(self, key) > 0:
                raise PassError(f"distill: {key} must be > 0, got {getattr(self, key)}")
        if self.steps < 0 or self.eval_every < 1 or self.patience < 1 or self.layers < 0 or self.decays < 0:
            raise PassError("distill: steps >= 0, eval_every >= 1, patience >= 1, layers >= 0 and decays >= 0 "
                            "are required")


def trained_outputs(graph: Graph) -> list[str]:
    """The float outputs the loss compares: all of them but a decoder's ``present`` cache, which
    is state for the next step (head pruning shrinks it) — what it leads to is in the logits."""
    from ...ir.decoder import cache_names

    _, state = cache_names(graph)
    return [v.name for v in graph.outputs if v.dtype.is_float and v.name not in state]


def _check_compatible(teacher: Graph, student: Graph) -> None:
    def io(g: Graph):
        return [(v.name, v.dtype) for v in g.inputs], [(v.name, v.dtype) for v in g.outputs]

    if io(teacher) != io(student):
        raise PassError("distill: the graph's inputs/outputs differ from the model before compression "
                        "(a pass changed the interface); there is nothing to distill against")


class _Trainer:
    def __init__(self, opts: Distill, teacher: Graph, student: Graph, names: list[str], hidden: list[str],
                 outputs: list[str]):
        from ...ir.interpreter import Interpreter

        self.opts, self.names, self.hidden, self.outputs = opts, names, hidden, outputs
        self.first = student.output_names()[0]
        self.teacher = Interpreter(_probe(teacher, hidden))
        self.student = Interpreter(_probe(student, hidden))
        self.initial = {n: student.constants[n].const for n in names}
        self.input_types = {v.name: v.dtype for v in student.inputs}
        seq = [v.shape[1] for v in student.inputs if v.shape is not None and len(v.shape) == 2]
        self.max_length = min([d for d in seq if isinstance(d, int)], default=MAX_AUGMENTED_LENGTH)

    def _feed(self, feed):
        from ...ir.interpreter.engine import numpy_to_compute

        return {k: numpy_to_compute(np.asarray(a), self.input_types[k]) for k, a in feed.items() if k in self.input_types}

    def _loss_kind(self, name: str) -> str:
        return ("kl" if is_logits(name) else "cosine") if self.opts.loss == "auto" else self.opts.loss

    def loss(self, got, want, feed):
        o = self.opts
        total = 0.0
        for name in self.outputs:
            s, t = got[name], want[name]
            mask = mask_for(s.shape, feed, np.float32)
            kind = self._loss_kind(name)
            total = total + (cosine_loss(s, t, mask) if kind == "cosine" else relative_mse(s, t, mask)
                             if kind == "mse" else kl_loss(s, t, o.temperature))
        if self.hidden:
            layer = sum(relative_mse(got[h], want[h], mask_for(got[h].shape, feed, np.float32)) for h in self.hidden)
            total = total + o.layers * layer / len(self.hidden)
        return total

    def evaluate(self, params, holdout, reference) -> Fidelity:
        import torch

        with torch.no_grad():
            outs = [{self.first: self.student.run_torch(self._feed(f), params)[self.first].numpy()} for f in holdout]
        return compare(reference, outs, holdout, self.first)

    def fit(self, train, holdout) -> dict:
        import torch

        from ...progress import Progress

        o = self.opts
        names = augment.token_input(train[0]) if o.augment > 0 else None
        pool = augment.token_pool(train, names) if names else None
        with torch.no_grad():
            targets = None if names else [self.teacher.run_torch(self._feed(f)) for f in train]
            reference = [{self.first: self.teacher.run_torch(self._feed(f))[self.first].numpy()} for f in holdout]
        warmup = max(1, min(20, o.steps // 10)) if o.steps else 20
        t0 = time.perf_counter()
        deadline = t0 + o.minutes * 60

        def new_run(lr: float) -> _Run:
            params = {n: torch.nn.Parameter(torch.from_numpy(np.array(a, np.float32))) for n, a in self.initial.items()}
            opt = torch.optim.Adam(params.values(), lr=lr)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warmup))
            return _Run(lr, params, opt, sched, np.random.default_rng(o.seed))

        def train_step(run: _Run) -> bool:
            """One optimizer step; False when the loss is not finite."""
            if not run.order:
                run.order = [int(i) for i in run.rng.permutation(len(train))]
            i = run.order.pop()
            feed = train[i]
            if names:
                feed = augment.augment(feed, names, pool, run.rng, replace=o.augment, max_length=self.max_length)
                with torch.no_grad():
                    want = self.teacher.run_torch(self._feed(feed))
            else:
                want = targets[i]
            loss = self.loss(self.student.run_torch(self._feed(feed), run.params), want, feed)
            if not torch.isfinite(loss):
                return False
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(run.params.values()), 1.0)
            run.opt.step()
            run.sched.step()
            run.step += 1
            return True

        lr = o.learning_rate()
        run = new_run(lr) if lr is not None else None
        before = best_fid = self.evaluate(new_run(0.0).params, holdout, reference)
        best, best_step, stale = None, 0, 0
        probes = []

        def checkpoint(fid=None) -> bool:
            nonlocal best, best_fid, best_step, stale
            fid = fid or self.evaluate(run.params, holdout, reference)
            prog.say(f"step {run.step} (lr {run.opt.param_groups[0]['lr']:g}), held-out cosine {fid.mean_cosine:.4f} "
                     f"(best {max(fid.mean_cosine, best_fid.mean_cosine):.4f}, before {before.mean_cosine:.4f})")
            if fid.mean_cosine > best_fid.mean_cosine:
                best, best_fid, best_step, stale = {n: p.detach().clone() for n, p in run.params.items()}, fid, run.step, 0
                return False
            stale += 1
            return stale >= o.patience

        stopped = "time"
        with Progress(f"held-out cosine {before.mean_cosine:.4f}", prefix=f"{o.name}: ") as prog:
            if run is None:  # lr=auto: a short probe of each rate from the same start, the best continues
                for lr in LR_CANDIDATES:
                    cand = new_run(lr)
                    while cand.step < min(PROBE_STEPS, o.steps or PROBE_STEPS) and time.perf_counter() < deadline \
                            and train_step(cand):
                        pass
                    fid = self.evaluate(cand.params, holdout, reference)
                    probes.append({"lr": lr, "steps": cand.step, "mean_cosine": round(fid.mean_cosine, 6)})
                    prog.say(f"lr {lr:g} probe, held-out cosine {fid.mean_cosine:.4f}")
                    if run is None or fid.mean_cosine > run_fid.mean_cosine:
                        run, run_fid = cand, fid
                checkpoint(run_fid)
            while time.perf_counter() < deadline:
                if o.steps and run.step >= o.steps:
                    stopped = "steps"
                    break
                if not train_step(run):
                    stopped = "diverged"
                    break
                if run.step % o.eval_every == 0 and checkpoint():
                    if run.decays >= o.decays:
                        stopped = "early"
                        break
                    run.decay(best if best is not None else self.initial, LR_DECAY)
                    stale = 0
            if run.step % o.eval_every and stopped != "diverged":
                checkpoint()
        weights = {n: best[n].numpy() for n in self.names} if best is not None else dict(self.initial)
        return {"weights": weights, "before": before, "after": best_fid, "steps": run.step, "best_step": best_step,
                "stopped": stopped, "seconds": time.perf_counter() - t0, "lr": run.lr, "lr_probes": probes,
                "lr_decays": run.decays}


@dataclass
class _Run:
    """One training run's state: its rate, weights, optimizer, schedule and batch order."""

    lr: float
    params: dict
    opt: object
    sched: object
    rng: np.random.Generator
    step: int = 0
    order: list = field(default_factory=list)
    decays: int = 0

    def decay(self, weights: Mapping, factor: float) -> None:
        """Go on from ``weights`` (the best so far) at ``factor`` times the rate: a plateau at one
        rate is often a slope at a smaller one (reduce-on-plateau)."""
        import torch

        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(torch.as_tensor(np.asarray(weights[name])))
        self.sched.base_lrs = [lr * factor for lr in self.sched.base_lrs]
        for group, lr in zip(self.opt.param_groups, self.sched.get_last_lr()):
            group["lr"] = lr * factor
        self.decays += 1


def _probe(graph: Graph, hidden: list[str]) -> Graph:
    """A copy of ``graph`` that also outputs the ``hidden`` values."""
    probe = graph.clone()
    probe.set_outputs(list(probe.outputs) + [probe.value(n) for n in hidden])
    return probe
