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


def pytest_collection_modifyitems(config, items):
    """Run the slow tier first (stable: order otherwise unchanged), so pytest-xdist spreads the
    long MiniLM tests over both workers instead of leaving one worker alone with them at the end
    (a fresh-clone CI run spent its last ~10 minutes on one worker in test_prune_heads). With
    ``--dist load`` that was not enough — xdist hands out the last tests in batches, and one worker
    sat idle for the last 17 minutes of a 60-minute run — so scripts/test.sh uses
    ``--dist worksteal``."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1)
