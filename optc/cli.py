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
    insp.add_argument("--passes", default="", metavar="PIPELINE",
                      help="run this pass pipeline first and show the graph after it (e.g. default)")
    _debug_flags(insp)
    insp.set_defaults(func=_cmd_inspect)

    comp = sub.add_parser("compile", help="compile a model into an artifact folder")
    comp.add_argument("model", help="an .onnx or .pt2 file")
    comp.add_argument("--target", default="x86", help="x86 (the host), x86-avx2, x86-avx512")
    comp.add_argument("-o", "--output", required=True, help="artifact folder to write")
    comp.add_argument("--passes", default="default", metavar="PIPELINE",
                      help="pass pipeline, e.g. 'default,prune-heads{ratio=0.25}' (default: default, exact passes only; see optc passes)")
    _debug_flags(comp)
    comp.set_defaults(func=_cmd_compile)

    ps = sub.add_parser("passes", help="list every pass with its options and the default pipeline")
    ps.add_argument("--json", action="store_true", help="print one JSON object")
    ps.set_defaults(func=_cmd_passes)

    run = sub.add_parser("run", help="run a compiled artifact (or a model file) on inputs from an .npz file")
    run.add_argument("model", help="an artifact folder, or an .onnx/.pt2 file (runs the reference interpreter)")
    run.add_argument("--inputs", required=True, help=".npz whose keys are the model's input names")
    run.add_argument("-o", "--output", required=True, help=".npz to write, keyed by output name")
    run.add_argument("--reference", action="store_true",
                     help="run a model file through the reference interpreter")
    run.set_defaults(func=_cmd_run)

    bench = sub.add_parser("bench", help="measure a compiled artifact's latency (and compare)")
    bench.add_argument("artifact", help="an artifact folder from optc compile")
    bench.add_argument("--inputs", help=".npz of inputs (default: random inputs; see --dim)")
    bench.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                       help="size of a symbolic dim for random inputs (repeatable)")
    bench.add_argument("--repeat", type=int, default=50, help="timed runs (default 50)")
    bench.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: all cores)")
    bench.add_argument("--compare", default="", help="comma list of: onnxruntime, torch (same model, same run)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(func=_cmd_bench)
    return p


def _debug_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--print-ir-after", metavar="PASS|all", default=None,
                   help="print the IR (to stderr) after each run of PASS (comma list), or after every pass")
    p.add_argument("--time-passes", action="store_true", help="print each pass's time (to stderr)")
    p.add_argument("--verify-each", action="store_true", help="run the IR verifier after each pass")
    p.add_argument("--check-numerics", action="store_true",
                   help="after each pass, compare outputs with the reference interpreter on random inputs")


def _instruments(args) -> list:
    from .api import instruments

    return instruments(print_ir_after=args.print_ir_after, time_passes=args.time_passes,
                       verify_each=args.verify_each, check_numerics=args.check_numerics)


def _cmd_passes(args) -> int:
    from .passes import default_pipeline_text, pass_info

    info = pass_info()
    if args.json:
        print(json.dumps({"default": default_pipeline_text(), "passes": info}))
        return 0
    print(f"default pipeline: {default_pipeline_text()}")
    print()
    for p in info:
        print(p["name"] + ("  [lossy]" if p["lossy"] else ""))
        print(f"    {p['doc']}")
        for o in p["options"]:
            print(f"    {o['name']}: {o['type']} = {json.dumps(o['default'])}  {o['doc']}")
    return 0


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
    report = None
    if args.passes:
        from .api import optimize

        report = optimize(graph, args.passes, instruments=_instruments(args))
    if args.ir:
        from .ir.text import print_graph

        print(print_graph(graph))
        return 0
    info = summarize(graph).to_json(_parse_dims(args.dim))
    if report is not None:
        info["pipeline"] = report.pipeline
        info["passes"] = report.reports
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
    if report is not None:
        print(f"pipeline: {report.pipeline}")
    print(f"nodes: {info['nodes']}")
    for op, count in info["ops"].items():
        print(f"  {op:<24} {count}")
    return 0


def _cmd_compile(args) -> int:
    from .api import compile as compile_model

    out = compile_model(args.model, args.output, target=args.target, passes=args.passes,
                        instruments=_instruments(args), progress=True)
    print(f"wrote {out}/")
    return 0


def _cmd_run(args) -> int:
    from .api import load, load_inputs, load_model, run_reference, save_outputs

    if Path(args.model).is_dir():
        if args.reference:
            from .ir.errors import OptcError

            raise OptcError("--reference runs a model file, not a compiled artifact folder")
        model = load(args.model)
        outputs = model.run(load_inputs(args.inputs))
    else:
        graph = load_model(args.model)
        outputs = run_reference(graph, load_inputs(args.inputs))
    save_outputs(args.output, outputs)
    for name, arr in outputs.items():
        print(f"{name}: {arr.dtype}{list(arr.shape)}")
    return 0


def _cmd_bench(args) -> int:
    from . import benchmark as bm
    from .ir.errors import OptcError

    threads = args.threads or _cores()
    bm.pin_threads(threads)  # before any runtime starts its thread pool
    from .api import load, load_inputs

    comparisons = [c.strip() for c in args.compare.split(",") if c.strip()]
    for c in comparisons:
        if c not in bm.COMPARATORS:
            raise OptcError(f"--compare: unknown runtime {c!r}; choose from {', '.join(bm.COMPARATORS)}")
    art = load(args.artifact)
    inputs = load_inputs(args.inputs) if args.inputs else bm.random_inputs(art.model.inputs, _parse_dims(args.dim))
    art.model.check(inputs)
    timings = [bm.measure("optc", lambda: art.run(inputs), args.repeat)]
    source = (art.manifest.get("model") or {}).get("path")
    for c in comparisons:
        if source is None or not Path(source).is_file():
            raise OptcError(f"--compare {c}: the source model {source!r} recorded in the manifest is not available")
        fn = bm.onnxruntime_runner(Path(source), inputs, threads) if c == "onnxruntime" else bm.torch_runner(Path(source), inputs)
        timings.append(bm.measure(c, fn, args.repeat))
    base = timings[0].median
    result = {"artifact": str(args.artifact), "threads": threads, "inputs": {k: list(v.shape) for k, v in inputs.items()},
              "latency": {t.name: t.to_json() for t in timings},
              "ratio_vs": {t.name: round(base / t.median, 3) for t in timings[1:]}}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.artifact}: {threads} threads, inputs " + ", ".join(f"{k}{v}" for k, v in result["inputs"].items()))
    for t in timings:
        ratio = "" if t is timings[0] else f"   optc/{t.name} = {base / t.median:.2f}x"
        print(f"  {t.name:<12} median {t.median:8.2f} ms   p90 {t.p90:8.2f} ms{ratio}")
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
