"""A compiled model keeps working in a forked child (multiprocessing's default start method on
Linux). TVM's thread pool does not survive fork: a process that ran a parallel kernel on two
threads, then forked, hung in the child's next parallel kernel (found by the fuzz tests, whose
cases are forks of a pytest worker that an in-process ``optc bench`` had set to two threads)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    from optc.codegen.build import build
    from optc.ir import DType, Graph, TensorType

    rng = np.random.default_rng(0)
    g = Graph("mlp")
    x = g.add_input("x", TensorType(DType.FLOAT32, ("batch", 256)))
    w = rng.standard_normal((256, 256)).astype(np.float32)
    g.set_outputs([g.op("Relu", g.op("MatMul", x, g.add_constant(w)))])
    model = build(g).load()
    feed = {"x": rng.standard_normal((64, 256)).astype(np.float32)}
    want = model.run(feed)  # the parent's pool starts here, with two workers
    assert len(os.listdir("/proc/self/task")) >= 2
    pid = os.fork()
    if pid == 0:
        got = model.run(feed)
        ok = all(np.array_equal(got[k], want[k]) for k in want)
        ok = ok and all(np.array_equal(model.run(feed)[k], want[k]) for k in want)  # and again
        os._exit(0 if ok else 3)
    import time
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            sys.exit(os.waitstatus_to_exitcode(status))
        time.sleep(0.05)
    os.kill(pid, 9)
    sys.exit(4)  # the child hung
""")


def test_a_forked_child_runs_the_parents_model():
    import os

    env = {**os.environ, "TVM_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 4, "the forked child hung in TVM's thread pool"
    assert r.returncode == 0, r.stderr[-2000:]
