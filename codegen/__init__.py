"""Codegen: IR → TVM Relax (+ TIR with optc's default schedules) → a built module per target."""
