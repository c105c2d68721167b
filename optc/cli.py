"""The ``optc`` command line: a thin layer over the Python API.

User errors (a bad file, an unsupported op, mismatched inputs) print one line and exit with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from .ir.errors import OptcError

    try:
        return args.func(args) or 0
    except OptcError as e:
        print(f"optc: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("optc: interrupted", file=sys.stderr)
        return 130


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="optc", description="A compiler-style graph optimizer for neural networks.")
    p.add_argument("--version", action="version", version=f"optc {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    insp = sub.add_parser("inspect", help="summarize a model: inputs, outputs, ops, parameters, FLOPs")
    insp.add_argument("model", help="an .onnx or .pt2 file")
    insp.add_argument("--json", action="store_true", help="print one JSON object")
    insp.add_argument("--ir", action="store_true", help="print the IR text")
    insp.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                      help="bind a symbolic dim when counting FLOPs (repeatable; unbound dims count as 1)")
    insp.set_defaults(func=_cmd_inspect)

    run = sub.add_parser("run", help="run a model on inputs from an .npz file")
    run.add_argument("model", help="an .onnx or .pt2 file")
    run.add_argument("--inputs", required=True, help=".npz whose keys are the model's input names")
    run.add_argument("-o", "--output", required=True, help=".npz to write, keyed by output name")
    run.add_argument("--reference", action="store_true",
                     help="run through the reference interpreter (the only engine for model files)")
    run.set_defaults(func=_cmd_run)
    return p


def _parse_dims(items: list[str]) -> dict[str, int]:
    from .ir.errors import OptcError

    dims = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise OptcError(f"--dim expects NAME=SIZE, got {item!r}")
        dims[name.strip()] = int(value)
    return dims


def _cmd_inspect(args) -> int:
    from .api import load_model
    from .ir.analysis import summarize

    graph = load_model(args.model)
    if args.ir:
        from .ir.text import print_graph

        print(print_graph(graph))
        return 0
    info = summarize(graph).to_json(_parse_dims(args.dim))
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"model: {args.model}")
    for kind in ("inputs", "outputs"):
        print(f"{kind}:")
        for v in info[kind]:
            shape = "[*]" if v["shape"] is None else "[" + ", ".join(map(str, v["shape"])) + "]"
            print(f"  {v['name']}: {v['dtype']}{shape}")
    print(f"parameters: {info['params']:,} ({info['param_bytes'] / 2**20:.1f} MiB)")
    bound = ", ".join(f"{k}={v}" for k, v in info["flops_dims"].items())
    print(f"FLOPs: {info['flops']:,}" + (f" at {bound}" if bound else "") + f"  ({info['flops_expr']})")
    print(f"nodes: {info['nodes']}")
    for op, count in info["ops"].items():
        print(f"  {op:<24} {count}")
    return 0


def _cmd_run(args) -> int:
    from .api import load_inputs, load_model, run_reference, save_outputs

    graph = load_model(args.model)
    inputs = load_inputs(args.inputs)
    outputs = run_reference(graph, inputs)
    save_outputs(args.output, outputs)
    for name, arr in outputs.items():
        print(f"{name}: {arr.dtype}{list(arr.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
