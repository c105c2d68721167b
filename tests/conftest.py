"""Test-wide checks: every graph a test executes through the reference interpreter is run
through the verifier first, so no test can pass on a malformed graph."""

from __future__ import annotations

import pytest

from optc.ir.interpreter import engine
from optc.ir.verifier import verify


@pytest.fixture(autouse=True)
def verify_every_interpreted_graph(monkeypatch):
    original = engine.Interpreter.__init__

    def init(self, graph, *args, **kwargs):
        verify(graph)
        original(self, graph, *args, **kwargs)

    monkeypatch.setattr(engine.Interpreter, "__init__", init)
