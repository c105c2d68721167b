"""``PassMemo``: pipelines that share a lossy prefix or a graph state reuse what an earlier one
computed — and end in exactly the graph they would have produced alone."""

from __future__ import annotations

import numpy as np
import pytest

import prune_models as pm
from optc.ir.fingerprint import array_digest, graph_fingerprint, inputs_digest
from optc.passes import PassContext, PassManager
from optc.passes.compression.fidelity import reference_outputs
from optc.passes.memo import PassMemo, memoized

HEADS = "prune-heads{ratio=0.25,importance=magnitude,refit=false}"
PIPELINES = [f"{HEADS},low-rank{{keep=0.9}}", f"{HEADS},quantize", "low-rank{keep=0.9},quantize", f"{HEADS}",
             f"{HEADS},prune-ffn{{ratio=0.25,importance=magnitude,refit=false}},quantize"]


def _calib():
    return pm.calibration("bert", sets=4, batch=4, seq=12)


def _alone(pipeline: str):
    g = pm.graph("bert")
    PassManager.parse(pipeline).run(g, PassContext(calibration=_calib()))
    return g


def test_fingerprint_is_content_not_identity():
    g = pm.graph("bert")
    c = g.clone()
    assert graph_fingerprint(g) == graph_fingerprint(c)
    name = next(n for n, v in c.constants.items() if v.const.size > 64)
    c.constants[name].const = c.constants[name].const + np.float32(1e-3)  # same structure, other numbers
    assert graph_fingerprint(g) != graph_fingerprint(c)
    a = np.arange(6, dtype=np.float32)
    assert array_digest(a) == array_digest(a.copy()) != array_digest(a.reshape(2, 3))
    assert array_digest(np.float32(1.0).reshape(())) != array_digest(np.ones(1, np.float32))
    assert inputs_digest([{"x": a}]) != inputs_digest([{"x": a + 1}])


def test_pipelines_through_one_memo_equal_pipelines_alone():
    memo, calib = PassMemo(), _calib()
    for text in PIPELINES:
        g = pm.graph("bert")
        reports = PassManager.parse(text).run(g, PassContext(calibration=calib, memo=memo)).reports
        assert graph_fingerprint(g) == graph_fingerprint(_alone(text)), text
        assert [r["pass"] for r in reports] == [str(p) for p in PassManager.parse(text).passes]
    # the 2nd, 4th and 5th pipelines start from the pruned prefix the 1st stored; the 3rd reuses
    # the calibration statistics of the unpruned graph that the 1st's low-rank computed
    assert memo.stats.state_hits >= 2 and memo.stats.passes_skipped >= 2
    assert memo.stats.value_hits >= 1
    reports = PassManager.parse(PIPELINES[1]).run(pm.graph("bert"), PassContext(calibration=calib, memo=memo)).reports
    assert all(r.get("reused") for r in reports)  # run before: wholly reused
    text = f"{HEADS},low-rank{{keep=0.8}}"
    g = pm.graph("bert")
    reports = PassManager.parse(text).run(g, PassContext(calibration=calib, memo=memo)).reports
    assert reports[0].get("reused") and not reports[-1].get("reused")
    assert graph_fingerprint(g) == graph_fingerprint(_alone(text))


def test_the_context_is_part_of_the_key():
    memo = PassMemo()
    PassManager.parse(f"{HEADS},quantize").run(pm.graph("bert"), PassContext(calibration=_calib(), memo=memo))
    other = pm.calibration("bert", sets=4, batch=4, seq=10)
    before = memo.stats.state_hits
    g = pm.graph("bert")
    PassManager.parse(f"{HEADS},quantize").run(g, PassContext(calibration=other, memo=memo))
    assert memo.stats.state_hits == before  # other calibration data: nothing reused
    want = pm.graph("bert")
    PassManager.parse(f"{HEADS},quantize").run(want, PassContext(calibration=other))
    assert graph_fingerprint(g) == graph_fingerprint(want)


def test_a_resumed_distill_trains_against_the_unpruned_teacher():
    memo, calib = PassMemo(), pm.calibration("bert", sets=4, batch=8, seq=12)
    PassManager.parse(f"{HEADS},quantize").run(pm.graph("bert"), PassContext(calibration=calib, memo=memo))
    ctx = PassContext(calibration=calib, memo=memo)
    text = f"{HEADS},distill{{steps=4,eval_every=2}}"
    g = pm.graph("bert")
    reports = PassManager.parse(text).run(g, ctx).reports
    assert memo.stats.passes_skipped >= 1 and reports[0].get("reused")
    # the prefix was stored by a pipeline without distill (ruin check on): valid for this one too
    assert graph_fingerprint(ctx.teacher) == graph_fingerprint(pm.graph("bert"))
    alone = pm.graph("bert")
    PassManager.parse(text).run(alone, PassContext(calibration=calib))
    assert graph_fingerprint(g) == graph_fingerprint(alone)


def test_cached_analyses_are_read_only_and_bounded():
    g, calib = pm.graph("bert"), _calib()
    memo = PassMemo(max_bytes=10 << 20)
    with memo.active():
        first = reference_outputs(g, calib)
        again = reference_outputs(g.clone(), calib)
    assert again is first and memo.stats.value_hits == 1
    out = next(iter(first[0].values()))
    with pytest.raises(ValueError):
        out[...] = 0  # a caller cannot corrupt the next trial's reference
    assert reference_outputs(g, calib) is not first  # no memo active: computed afresh
    with memo.active():
        for i in range(40):  # ~1 MB each: the oldest go
            memoized("big", g, calib, (i,), lambda: np.zeros(1 << 18, np.float32))
    assert memo.bytes <= 10 << 20 and memo.stats.evicted > 0
