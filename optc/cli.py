"""The ``optc`` command line: a thin layer over the Python API.

User errors (a bad file, an unsupported op, mismatched inputs) print one line and exit with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__

MAX_REPEAT = 1_000_000
MAX_DIM = 1 << 31


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print(f"{e.prog}: error: {_one_line(str(e))} (see {e.prog} --help)", file=sys.stderr)
        return 2
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    _log_to_stderr()
    from .errors import OptcError, translate

    try:
        return args.func(args) or 0
    except (OptcError, OSError, MemoryError) as e:
        print(f"optc: error: {_one_line(str(translate(e)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("optc: interrupted", file=sys.stderr)
        return 130


class _WarningFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "warning" if record.levelno >= logging.WARNING else "note"
        return f"optc: {level}: {_one_line(record.getMessage())}"


def _log_to_stderr() -> None:
    """optc's warnings (``logging.getLogger("optc...")``) go to stderr as ``optc: warning: ...``
    lines, one each, whoever configured logging before."""
    log = logging.getLogger("optc")
    for h in [h for h in log.handlers if getattr(h, "_optc_cli", False)]:
        log.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._optc_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_WarningFormat())
    handler.setLevel(logging.WARNING)
    log.addHandler(handler)


class _UsageError(Exception):
    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``optc compile: error: ...``), raised for ``main`` to print."""

    def error(self, message: str):
        raise _UsageError(self.prog, message)


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="optc", description="A compiler-style graph optimizer for neural networks.")
    p.add_argument("--version", action="version", version=f"optc {__version__}")
    sub = p.add_subparsers(metavar="COMMAND", parser_class=_Parser)

    insp = sub.add_parser("inspect", help="summarize a model: inputs, outputs, ops, parameters, FLOPs")
    insp.add_argument("model", help="an .onnx, .pt2 or .optc-ir file")
    insp.add_argument("--json", action="store_true", help="print one JSON object")
    insp.add_argument("--ir", action="store_true", help="print the IR text")
    insp.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                      help="bind a symbolic dim when counting FLOPs (repeatable; unbound dims count as 1)")
    insp.add_argument("--passes", default="", metavar="PIPELINE",
                      help="run this pass pipeline first and show the graph after it (e.g. default)")
    insp.add_argument("--explain-fusion", action="store_true",
                      help="run the default pipeline's cleanup and fusions, and say for each fusion what fused and "
                           "why every other candidate did not")
    _calib_flags(insp)
    _debug_flags(insp)
    insp.set_defaults(func=_cmd_inspect)

    comp = sub.add_parser("compile", help="compile a model into an artifact folder")
    comp.add_argument("model", help="an .onnx, .pt2 or .optc-ir file")
    comp.add_argument("--target", default="x86",
                      help="a preset (x86 = this machine, x86-avx2, arm64, arm64-dotprod, cuda-sm90, ...: see "
                           "optc targets) or a TVM target as JSON")
    comp.add_argument("-o", "--output", required=True, help="artifact folder to write")
    comp.add_argument("--passes", default="default", metavar="PIPELINE",
                      help="pass pipeline, e.g. 'default,prune-heads{ratio=0.25}' (default: default, exact passes only; see optc passes)")
    comp.add_argument("--tuning-db", metavar="DIR",
                      help="apply the kernels optc tune kept for this target (a static function per tuned shape bucket)")
    comp.add_argument("--unchecked", action="store_true",
                      help="leave out the run-time checks of data-dependent indices and integer divisors "
                           "(out-of-range values then give undefined results)")
    _calib_flags(comp, "Hugging Face tokenizer folder: tokenizes a text --calib file, and the artifact carries "
                       "its tokenizer files (optc generate takes text)")
    _debug_flags(comp)
    comp.set_defaults(func=_cmd_compile)

    tune = sub.add_parser("tune", help="tune the model's kernels with MetaSchedule into a tuning database")
    tune.add_argument("model", help="an .onnx, .pt2 or .optc-ir file")
    tune.add_argument("--target", default="x86", help="a CPU preset this machine runs (default x86: this machine)")
    tune.add_argument("--db", required=True, metavar="DIR", help="tuning database folder (created; extended when it exists)")
    tune.add_argument("--trials", type=int, default=64, metavar="N", help="MetaSchedule trials per kernel (default 64)")
    tune.add_argument("--time-budget", default=None, metavar="DURATION",
                      help="stop starting kernels after this long, e.g. 90s, 20m, 1h (default: no limit)")
    tune.add_argument("--buckets", default=None, metavar="DIM=SIZES",
                      help="sizes to tune the symbolic dims at, e.g. 'seq=32,64,128 batch=1' (default: batch dims 1, "
                           "others 128)")
    tune.add_argument("--passes", default="default", metavar="PIPELINE",
                      help="pass pipeline, as for compile (the kernels are the optimized model's)")
    tune.add_argument("--rpc-tracker", metavar="HOST:PORT",
                      help="time the kernels on a board over TVM's RPC: a tracker (with --rpc-key) or a server")
    tune.add_argument("--rpc-key", metavar="KEY", help="the board's key at the tracker")
    tune.add_argument("--json", action="store_true", help="print the report as one JSON object")
    _calib_flags(tune)
    tune.set_defaults(func=_cmd_tune)

    sw = sub.add_parser("sweep", help="search compression settings for the accuracy/latency/size Pareto front")
    sw.add_argument("model", nargs="?", help="an .onnx, .pt2 or .optc-ir file")
    sw.add_argument("--show", metavar="RUN_DIR", help="print the Pareto front of a sweep folder and stop")
    sw.add_argument("--space", metavar="SPACE.toml", help="the pass options and values to search (see docs)")
    sw.add_argument("-o", "--output", metavar="RUN_DIR", help="sweep folder (created; a sweep there is resumed)")
    sw.add_argument("--target", default="x86", help="a CPU preset this machine runs (default x86)")
    sw.add_argument("--eval", metavar="FILE", help="held-out inputs for fidelity: .npz, or sentences with --tokenizer")
    sw.add_argument("--eval-batch", type=int, default=None, metavar="N", help="rows per evaluation input set (default 8)")
    sw.add_argument("--time-budget", default=None, metavar="DURATION", help="start no point after this, e.g. 45m")
    sw.add_argument("--trials", type=int, default=None, metavar="N", help="measure at most N new points")
    sw.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                    help="symbolic dim size for latency (repeatable; default batch dims 1, others 128)")
    sw.add_argument("--workers", type=int, default=1, metavar="N", help="points measured at once, on Ray (default 1)")
    sw.add_argument("--threads", type=int, default=None, metavar="N",
                    help="threads each point is timed with (default: every CPU this process may use, as optc bench; "
                         "1 per Ray worker)")
    sw.add_argument("--ray-address", metavar="ADDR", help="an existing Ray cluster (default: a local Ray)")
    sw.add_argument("--sampler", default="auto", choices=["auto", "grid", "nsga2", "tpe"],
                    help="auto: the grid for spaces of up to 64 points, else NSGA-II")
    sw.add_argument("--seed", type=int, default=0)
    _calib_flags(sw)
    sw.set_defaults(func=_cmd_sweep)

    opt = sub.add_parser("optimize", help="run a pass pipeline and write the optimized model file (.onnx or .optc-ir)")
    opt.add_argument("model", help="an .onnx, .pt2 or .optc-ir file")
    opt.add_argument("-o", "--output", required=True,
                     help="model file to write: .onnx (ONNX export) or .optc-ir (IR text, weights inline; every op)")
    opt.add_argument("--passes", default="default", metavar="PIPELINE", help="pass pipeline (default: default)")
    opt.add_argument("--json", action="store_true", help="print one JSON object (pipeline and pass reports)")
    opt.add_argument("--target", default=None, metavar="TARGET",
                     help="the target the model will be compiled for, where a pass depends on it (quantize: the int8 "
                          "activation range its kernel multiplies exactly); default: target-independent")
    _calib_flags(opt)
    _debug_flags(opt)
    opt.set_defaults(func=_cmd_optimize)

    ev = sub.add_parser("eval", help="compare a compressed model with its original on held-out inputs")
    ev.add_argument("original", help="a model file (.onnx/.pt2/.optc-ir) or an artifact folder")
    ev.add_argument("compressed", help="a model file (.onnx/.pt2/.optc-ir) or an artifact folder")
    ev.add_argument("--inputs", required=True, metavar="FILE",
                    help=".npz of model inputs (leading batch axis), or a text file of sentences with --tokenizer")
    ev.add_argument("--tokenizer", metavar="DIR", help="Hugging Face tokenizer folder, for a text --inputs file")
    ev.add_argument("--max-length", type=int, default=128, metavar="N", help="truncate sentences to N tokens (default 128)")
    ev.add_argument("--batch", type=int, default=None, metavar="N", help="rows (sentences) per input set (default 8)")
    ev.add_argument("--output", metavar="NAME", help="the output to compare (default: the original's first)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(func=_cmd_eval)

    tg = sub.add_parser("targets", help="list the target presets and what each assumes about the machine")
    tg.add_argument("--json", action="store_true", help="print the presets' TVM targets as JSON")
    tg.set_defaults(func=_cmd_targets)

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

    gen = sub.add_parser("generate", help="generate text with a compiled decoder (KV cache): streamed, with tokens/s")
    gen.add_argument("artifact", help="an artifact folder compiled from a decoder with its KV cache")
    gen.add_argument("--prompt", required=True, action="append",
                     help="the text to continue; several --prompt run as one batch (a decoder compiled with an "
                          "attention mask)")
    gen.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="tokens to generate at most (default 64)")
    gen.add_argument("--temperature", type=float, default=0.0,
                     help="0 (default): greedy; above 0: sample from the softmax of logits / temperature")
    gen.add_argument("--top-k", type=int, default=0, metavar="K", help="sample among the K most likely tokens (0: all)")
    gen.add_argument("--top-p", type=float, default=1.0, metavar="P",
                     help="sample among the fewest most likely tokens whose probabilities add up to P (1: all)")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                     help="divide the logits of tokens already in the text by R (as Hugging Face's; 1: off)")
    gen.add_argument("--seed", type=int, default=None, help="seed of the sampling")
    gen.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the one the artifact carries)")
    gen.add_argument("--chat", action="store_true",
                     help="the prompt is a user's message: put it in the tokenizer's chat template (instruct models)")
    gen.add_argument("--json", action="store_true", help="print one JSON object at the end instead of streaming")
    gen.set_defaults(func=_cmd_generate)

    bench = sub.add_parser("bench", help="measure a compiled artifact's latency (and compare)")
    bench.add_argument("artifact", help="an artifact folder from optc compile")
    bench.add_argument("--inputs", help=".npz of inputs (default: random inputs; see --dim)")
    bench.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                       help="size of a symbolic dim for random inputs (repeatable)")
    bench.add_argument("--repeat", type=int, default=50, help=f"timed runs, 1 to {MAX_REPEAT:,} (default 50)")
    bench.add_argument("--threads", type=int, default=None,
                       help="threads for every runtime, 1 to the CPUs this process may use (default: all of them)")
    bench.add_argument("--compare", default="", help="comma list of: onnxruntime, torch (same model, same run)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--remote", metavar="HOST:PORT",
                       help="time it on another machine over TVM's RPC: an `optc-run --rpc-server` there (or TVM's "
                            "RPC server), or a TVM RPC tracker (then --rpc-key names the board)")
    bench.add_argument("--rpc-key", metavar="KEY",
                       help="with --remote: the board's key at the tracker (or the key its server was started with)")
    bench.set_defaults(func=_cmd_bench)
    return p


def _calib_flags(p: argparse.ArgumentParser,
                 tokenizer_help: str = "Hugging Face tokenizer folder, for a text --calib file") -> None:
    p.add_argument("--calib", metavar="FILE",
                   help="calibration inputs for lossy passes: .npz of model inputs (leading batch axis), "
                        "or a text file of sentences (one per line) with --tokenizer")
    p.add_argument("--tokenizer", metavar="DIR", help=tokenizer_help)
    p.add_argument("--max-length", type=int, default=128, metavar="N", help="truncate sentences to N tokens (default 128)")
    p.add_argument("--calib-batch", type=int, default=None, metavar="N",
                   help="rows (sentences) per calibration input set (default 8, or the model's fixed batch)")


def _calibration(args, tokenizer_alone: bool = False):
    """The ``--calib`` file as an ``InputsFile`` (checked now, read once the model is loaded).
    ``tokenizer_alone``: ``--tokenizer`` is meaningful without ``--calib`` (compile bundles it)."""
    from .calibration import InputsFile
    from .ir.errors import OptcError

    if args.calib is None:
        checks = [("--calib-batch", args.calib_batch, None)] + ([] if tokenizer_alone else [("--tokenizer", args.tokenizer, None)])
        for flag, value, default in checks:
            if value != default:
                raise OptcError(f"{flag} needs --calib FILE")
        return None
    if args.max_length < 1:
        raise OptcError(f"--max-length must be at least 1, got {args.max_length}")
    f = InputsFile(args.calib, args.tokenizer, args.max_length, args.calib_batch, flag="--calib")
    f.check()
    return f


def _warn_uncalibrated(passes: str, calibration) -> None:
    from .passes import PassManager

    lossy = [str(p) for p in PassManager.parse(passes).passes if p.lossy]
    if lossy and calibration is None:
        print(f"optc: note: lossy pass(es) {', '.join(lossy)} run without --calib: they calibrate on random inputs",
              file=sys.stderr)


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
        value = value.strip()
        if not sep or not name.strip() or not value.isascii() or not value.isdigit():
            raise OptcError(f"--dim expects NAME=SIZE with SIZE a whole number, got {item!r}")
        if int(value) > MAX_DIM:
            raise OptcError(f"--dim {item}: at most {MAX_DIM:,}")
        dims[name.strip()] = int(value)
    return dims


def _explain_fusion(args) -> int:
    from .api import load_model, optimize
    from .ir.errors import OptcError
    from .passes.fusion import explain_fusions
    from .passes.pipeline import CLEANUP_PIPELINE

    if args.passes or args.ir:
        raise OptcError("--explain-fusion runs the default pipeline's cleanup itself; leave out --passes and --ir")
    graph = load_model(args.model)
    optimize(graph, CLEANUP_PIPELINE)
    outcomes = explain_fusions(graph)
    if args.json:
        print(json.dumps({"fusions": [{"rule": o.rule, "fused": o.matched, "not_fused": o.misses} for o in outcomes]}))
        return 0
    shown = 8
    for o in outcomes:
        print(f"{o.rule}: {o.matched} fused" + (f", {len(o.misses)} not" if o.misses else ""))
        reasons: dict[str, list[str]] = {}
        for m in o.misses:
            reasons.setdefault(m["reason"], []).append(f"{m['op']} {m['node']}")
        for reason, nodes in reasons.items():
            more = f" and {len(nodes) - shown} more" if len(nodes) > shown else ""
            print(f"  {reason}: {', '.join(nodes[:shown])}{more}")
    return 0


def _cmd_inspect(args) -> int:
    from .api import load_model
    from .ir.analysis import summarize

    calibration = _calibration(args)
    if calibration is not None and not args.passes:
        from .ir.errors import OptcError

        raise OptcError("--calib needs --passes PIPELINE (the lossy passes calibrate on it)")
    if args.explain_fusion:
        return _explain_fusion(args)
    if args.passes:
        _warn_uncalibrated(args.passes, calibration)
    graph = load_model(args.model)
    report = None
    if args.passes:
        from .api import optimize

        report = optimize(graph, args.passes, instruments=_instruments(args), calibration=calibration)
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
    if report is not None:
        _print_lossy_reports(report.reports)
    return 0


def _cmd_targets(args) -> int:
    from .targets import TargetError, get_target, presets

    rows = []
    for name, summary in presets():
        try:
            target = get_target(name)
            rows.append({"name": name, "assumes": summary, "tvm": target.tvm_target,
                         "requires": list(target.features), "toolchain": target.cross_compiler})
        except TargetError as e:  # e.g. "cuda" on a machine without a GPU
            rows.append({"name": name, "assumes": summary, "unavailable": str(e)})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['assumes']}")
    print("\n--target also takes a TVM target as JSON, e.g. "
          "'{\"kind\": \"llvm\", \"mtriple\": \"aarch64-linux-gnu\", \"mcpu\": \"cortex-a76\"}'")
    return 0


def _cmd_compile(args) -> int:
    from .api import compile as compile_model
    from .fileio import check_output_dir
    from .passes import PassManager
    from .targets import get_target

    check_output_dir(args.output)
    get_target(args.target).check_toolchain()
    PassManager.parse(args.passes)
    calibration = _calibration(args, tokenizer_alone=True)
    _warn_uncalibrated(args.passes, calibration)
    out = compile_model(args.model, args.output, target=args.target, passes=args.passes,
                        instruments=_instruments(args), progress=True, calibration=calibration,
                        checked=not args.unchecked, tuning_db=args.tuning_db, tokenizer=args.tokenizer)
    from .codegen.artifact import read_manifest

    _print_lossy_reports(read_manifest(out).get("passes") or [])
    print(f"wrote {out}/")
    return 0


def _cmd_tune(args) -> int:
    from dataclasses import asdict

    from .api import jsonable
    from .tuning import report_table, tune

    report = tune(args.model, args.db, target=args.target, passes=args.passes, calibration=_calibration(args),
                  trials=args.trials, time_budget=args.time_budget, buckets=args.buckets,
                  rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key)
    if args.json:
        print(json.dumps(jsonable({**{k: v for k, v in vars(report).items() if k != "kernels"},
                                   "gain": report.gain(), "kernels": [asdict(e) for e in report.kernels]})))
    else:
        print(report_table(report))
        print(f"database: {report.database}")
    return 0


def _cmd_sweep(args) -> int:
    from .calibration import InputsFile
    from .ir.errors import OptcError
    from .sweep import show
    from .sweep.run import run_sweep

    if args.show:
        print(show(args.show))
        return 0
    for flag, value in (("MODEL", args.model), ("--space", args.space), ("-o RUN_DIR", args.output)):
        if value is None:
            raise OptcError(f"optc sweep needs {flag} (or --show RUN_DIR)")
    eval_inputs = None
    if args.eval is not None:
        eval_inputs = InputsFile(args.eval, args.tokenizer, args.max_length, args.eval_batch, flag="--eval")
    report = run_sweep(args.model, args.space, args.output, target=args.target, calibration=_calibration(args),
                       eval_inputs=eval_inputs, eval_label=args.eval, dims=_parse_dims(args.dim),
                       time_budget=args.time_budget, trials=args.trials, workers=args.workers, threads=args.threads,
                       ray_address=args.ray_address, sampler=args.sampler, seed=args.seed)
    print(show(args.output))
    print(f"{report.measured} point(s) measured, {report.reused} read back, {report.failed} without a measurement; "
          f"{report.seconds / 60:.1f} min; stopped: {report.stopped}")
    print(f"wrote {args.output}/pareto.csv, pareto.json, pareto.png, report.html")
    return 0


def _cmd_optimize(args) -> int:
    from .api import IR_SUFFIXES, load_model, optimize, save_model
    from .fileio import check_output_file
    from .passes import PassManager

    out = check_output_file(args.output, (".onnx",) + IR_SUFFIXES)

    PassManager.parse(args.passes)
    calibration = _calibration(args)
    _warn_uncalibrated(args.passes, calibration)
    graph = load_model(args.model)
    target = None
    if args.target is not None:
        from .targets import get_target

        target = get_target(args.target)
    result = optimize(graph, args.passes, target=target, instruments=_instruments(args), calibration=calibration)
    save_model(graph, out)
    if args.json:
        print(json.dumps({"model": args.model, "output": str(out), "pipeline": result.pipeline, "passes": result.reports}))
        return 0
    _print_lossy_reports(result.reports)
    print(f"pipeline: {result.pipeline}")
    print(f"wrote {out}")
    return 0


def _cmd_eval(args) -> int:
    from .calibration import InputsFile
    from .evaluate import evaluate
    from .ir.errors import OptcError

    if args.max_length < 1:
        raise OptcError(f"--max-length must be at least 1, got {args.max_length}")
    inputs = InputsFile(args.inputs, args.tokenizer, args.max_length, args.batch, flag="--inputs")
    inputs.check()
    for path in (args.original, args.compressed):
        if not Path(path).exists():
            raise OptcError(f"{path}: no such model file or artifact folder")
    result = evaluate(args.original, args.compressed, inputs, output=args.output)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print("\n".join(result.lines()))
    return 0


# -- pass reports ------------------------------------------------------------------------------
_REPORT_HEAD = ("pass", "name", "lossy", "changed", "nodes_before", "nodes_after", "seconds")


def _print_lossy_reports(reports: list[dict]) -> None:
    """Each lossy pass's report, readable: before -> after pairs, fidelity, then the rest."""
    for r in reports:
        if r.get("lossy"):
            print("\n".join(format_report(r)))


def format_report(report: dict, max_rows: int = 12) -> list[str]:
    """One pass report as lines. ``X_before``/``X_after`` pairs (or ``{"before", "after"}``)
    print as ``before -> after (change)``; a fidelity dict (``mean_cosine`` ...) as one line; a
    list of dicts (per-layer choices) as one row each, the first ``max_rows``; the rest
    generically. Everything is in the manifest / ``--json`` in full."""
    head = f"{report.get('pass', report.get('name', '?'))}: " + ("changed" if report.get("changed") else "unchanged")
    if isinstance(report.get("seconds"), (int, float)):
        head += f" in {report['seconds']:.2f} s"
    body = {k: v for k, v in report.items() if k not in _REPORT_HEAD}
    return [head] + _report_lines(body, 1, max_rows)


def _report_lines(d: dict, depth: int, max_rows: int) -> list[str]:
    pad = "  " * depth
    width = max(8, 18 - 2 * depth)
    lines = []
    done = set()
    for k in d:
        if k.endswith("_before") and k[:-7] + "_after" in d:
            base = k[:-7]
            lines.append(f"{pad}{_label(base):<{width}} {_before_after(d[k], d[base + '_after'])}")
            done |= {k, base + "_after"}
    for k, v in d.items():
        if k in done:
            continue
        if isinstance(v, dict) and set(v) >= {"before", "after"}:
            lines.append(f"{pad}{_label(k):<{width}} {_before_after(v['before'], v['after'])}")
        elif isinstance(v, dict) and "mean_cosine" in v:
            lines.append(f"{pad}{_label(k):<{width}} {_fidelity_text(v)}")
        elif isinstance(v, dict) and v and depth < 3 and (len(v) > 4 or _has_pair(v)
                                                          or not all(_scalar(x) for x in v.values())):
            lines.append(f"{pad}{_label(k)}:")
            lines += _report_lines(v, depth + 1, max_rows)
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            lines.append(f"{pad}{_label(k)}: {len(v)}")
            for row in v[:max_rows]:
                lines.append(f"{pad}  {_row(row)}")
            if len(v) > max_rows:
                lines.append(f"{pad}  ... {len(v) - max_rows} more (all in --json / the manifest)")
        else:
            lines.append(f"{pad}{_label(k):<{width}} {_value(v)}")
    return lines


def _has_pair(d: dict) -> bool:
    return any(k.endswith("_before") and k[:-7] + "_after" in d for k in d)


def _label(key: str) -> str:
    return key.replace("_", " ")


def _row(row: dict) -> str:
    """One dict as ``name: k=v, a -> b`` on a line."""
    name = row.get("name")
    parts = []
    for k, v in row.items():
        if k == "name" or (k.endswith("_after") and k[:-6] + "_before" in row):
            continue
        if k.endswith("_before") and k[:-7] + "_after" in row:
            parts.append(f"{k[:-7]} {_value(v)} -> {_value(row[k[:-7] + '_after'])}")
        else:
            parts.append(f"{k}={_value(v)}")
    return (f"{name}: " if name is not None else "") + ", ".join(parts)


def _before_after(before, after) -> str:
    text = f"{_value(before)} -> {_value(after)}"
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and not isinstance(before, bool) and before:
        text += f" ({(after - before) / before * 100:+.1f}%)"
    return text


def _fidelity_text(f: dict) -> str:
    return ", ".join(f"{_label(k)} {_value(v)}" for k, v in f.items() if v is not None)


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _value(v, limit: int = 12) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        shown = ", ".join(_value(x, limit) for x in v[:limit])
        return f"[{shown}{', ...' if len(v) > limit else ''}]" + (f" ({len(v)} items)" if len(v) > limit else "")
    if isinstance(v, dict):
        items = list(v.items())
        shown = ", ".join(f"{k}={_value(x, limit)}" for k, x in items[:limit])
        return "{" + shown + (", ..." if len(items) > limit else "") + "}"
    return str(v)


def _cmd_run(args) -> int:
    from .api import load, load_inputs, load_model, run_reference, save_outputs
    from .fileio import check_output_file

    check_output_file(args.output, (".npz",))
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


def _cmd_generate(args) -> int:
    import json

    from .api import load

    artifact = load(args.artifact)
    if not hasattr(artifact, "generate"):
        from .ir.errors import OptcError

        raise OptcError(f"{args.artifact}: generation runs artifacts this machine can run in-process "
                        "(this one runs through its native runner)")
    shown = [0]

    def stream(text: str) -> None:
        sys.stdout.write(text[shown[0]:])
        sys.stdout.flush()
        shown[0] = len(text)

    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   repetition_penalty=args.repetition_penalty, seed=args.seed, tokenizer=args.tokenizer, chat=args.chat)
    if len(args.prompt) > 1:
        return _generate_batch(artifact, args, options)
    r = artifact.generate(args.prompt[0], args.max_new_tokens, **options, on_text=None if args.json else stream)
    if args.json:
        print(json.dumps(_generation_json(args.prompt[0], r)))
        return 0
    print()
    print(f"prefill: {len(r.prompt)} tokens in {r.prefill_s * 1e3:.1f} ms ({r.prefill_tokens_per_s:.0f} tokens/s); "
          f"decode: {len(r.tokens) - 1} tokens in {r.decode_s * 1e3:.1f} ms ({r.decode_tokens_per_s:.1f} tokens/s)"
          f"{'; stopped at the end-of-text token' if r.stopped == 'stop token' else ''}", file=sys.stderr)
    return 0


def _generation_json(prompt: str, r) -> dict:
    return {"prompt": prompt, "text": r.text, "tokens": r.tokens, "prompt_tokens": len(r.prompt), "stopped": r.stopped,
            "prefill_s": r.prefill_s, "decode_s": r.decode_s, "prefill_tokens_per_s": r.prefill_tokens_per_s,
            "decode_tokens_per_s": r.decode_tokens_per_s}


def _generate_batch(artifact, args, options: dict) -> int:
    """Several prompts in one batch: each completion printed under its number (or a JSON list),
    and the batch's throughput."""
    results = artifact.generate_batch(args.prompt, args.max_new_tokens, **options)
    if args.json:
        print(json.dumps([_generation_json(p, r) for p, r in zip(args.prompt, results)]))
        return 0
    for i, r in enumerate(results, 1):
        print(f"[{i}] {r.text}")
    prompt_tokens = sum(len(r.prompt) for r in results)
    steps = max(len(r.tokens) for r in results) - 1
    new = sum(len(r.tokens) for r in results) - len(results)  # the first token of each comes from the prefill
    decode_s = results[0].decode_s
    print(f"prefill: {len(results)} prompts, {prompt_tokens} tokens in {results[0].prefill_s * 1e3:.1f} ms; "
          f"decode: {steps} steps, {new} tokens in {decode_s * 1e3:.1f} ms "
          f"({new / decode_s if decode_s else float('nan'):.1f} tokens/s over the batch)", file=sys.stderr)
    return 0


def _cmd_bench(args) -> int:
    """Times the artifact here (in process), on a board over TVM's RPC (``--remote``), or, for an
    artifact built for another architecture, under qemu-user with a warning (its runner)."""
    from . import benchmark as bm
    from .ir.errors import OptcError

    if not 1 <= args.repeat <= MAX_REPEAT:
        raise OptcError(f"--repeat must be between 1 and {MAX_REPEAT:,}, got {args.repeat}")
    comparisons = [c.strip() for c in args.compare.split(",") if c.strip()]
    for c in comparisons:
        if c not in bm.COMPARATORS:
            raise OptcError(f"--compare: unknown runtime {c!r}; choose from {', '.join(bm.COMPARATORS)}")
    dims = _parse_dims(args.dim)
    if args.rpc_key is not None and not args.remote:
        raise OptcError("--rpc-key goes with --remote HOST:PORT (a tracker, or a server started with that key)")
    if args.remote:
        return _bench_remote(args, dims, comparisons)
    cores = _cores()
    threads = cores if args.threads is None else args.threads
    if not 1 <= threads <= cores:
        raise OptcError(f"--threads must be between 1 and {cores} (the CPUs this process may use), got {threads}")
    bm.pin_threads(threads)  # before any runtime starts its thread pool
    from .api import load, load_inputs
    from .codegen.artifact import check_source_model

    _, signature = bm.artifact_signature(args.artifact, verify=False)  # load() verifies; here only: which machine?
    foreign = bm.foreign_arch(signature)
    emulated = None
    if foreign:
        from .native import ARCHES, normalize_arch

        bm.artifact_signature(args.artifact)  # its files' checksums

        emulated = ARCHES[normalize_arch(foreign)][3]
        if comparisons:
            raise OptcError(f"--compare: {args.artifact} is built for {foreign} and runs here only under {emulated} "
                            "emulation, so no comparison would mean anything; time it on the board with --remote HOST:PORT")
        inputs = load_inputs(args.inputs) if args.inputs else bm.random_inputs(signature.inputs, dims)
        signature.check(inputs)
        logging.getLogger("optc.bench").warning(
            f"{args.artifact} is built for {foreign} and runs under {emulated} emulation here: these timings say "
            "nothing about a real board; use --remote HOST:PORT to time it on one")
        timings = [bm.emulated_timing(args.artifact, signature, inputs, args.repeat, threads)]
    else:
        art = load(args.artifact)
        source = check_source_model(art.manifest) if comparisons else None
        inputs = load_inputs(args.inputs) if args.inputs else bm.random_inputs(art.model.inputs, dims)
        art.model.check(inputs)
        timings = [bm.measure("optc", lambda: art.run(inputs), args.repeat)]
        for c in comparisons:
            fn = bm.onnxruntime_runner(source, inputs, threads) if c == "onnxruntime" else bm.torch_runner(source, inputs)
            timings.append(bm.measure(c, fn, args.repeat))
    extra = {"emulated": emulated} if emulated else {}
    note = f"  (under {emulated} emulation: not the board's speed)" if emulated else None
    return _print_bench(args, threads, inputs, timings, extra, note)


def _bench_remote(args, dims: dict[str, int], comparisons: list[str]) -> int:
    """``optc bench --remote HOST:PORT``: the model uploaded to the board and timed there."""
    from . import benchmark as bm
    from .api import load_inputs
    from .ir.errors import OptcError
    from .native import remote as rn

    if comparisons:
        raise OptcError("--compare runs the other runtimes on this machine, not on the board: leave it out with --remote")
    if args.threads is not None and args.threads < 1:
        raise OptcError(f"--threads must be at least 1, got {args.threads}")
    rn.parse_address(args.remote)  # a bad value fails before any file is read
    _, signature = bm.artifact_signature(args.artifact)
    inputs = load_inputs(args.inputs) if args.inputs else bm.random_inputs(signature.inputs, dims)
    signature.check(inputs)
    remote = rn.connect(args.remote, args.rpc_key)
    try:
        if args.threads is not None:
            remote.set_threads(args.threads)  # before anything runs there
        model = remote.load(args.artifact)
        timings = [bm.remote_timing(model, inputs, args.repeat)]
        threads = remote.threads()
    finally:
        remote.close()
    return _print_bench(args, threads, inputs, timings, {"remote": remote.to_json()}, f"  on {remote.describe()}")


def _print_bench(args, threads, inputs, timings, extra: dict, note: str | None) -> int:
    base = timings[0].median
    result = {"artifact": str(args.artifact), "threads": threads, "inputs": {k: list(v.shape) for k, v in inputs.items()},
              "latency": {t.name: t.to_json() for t in timings},
              "ratio_vs": {t.name: round(base / t.median, 3) for t in timings[1:]}, **extra}
    if args.json:
        print(json.dumps(result))
        return 0
    shown = f"{threads} threads" if threads is not None else "default threads"
    print(f"{args.artifact}: {shown}, inputs " + ", ".join(f"{k}{v}" for k, v in result["inputs"].items()))
    if note:
        print(note)
    for t in timings:
        ratio = "" if t is timings[0] else f"   optc/{t.name} = {base / t.median:.2f}x"
        print(f"  {t.name:<12} median {t.median:8.2f} ms   p90 {t.p90:8.2f} ms{ratio}")
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
