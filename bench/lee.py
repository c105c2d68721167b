"""The Lee et al. document-similarity benchmark for all-MiniLM-L6-v2, before and after a
compression pipeline.

Embeds the 50 Lee documents (mask-weighted mean of the last hidden state, L2-normalized),
builds their cosine-similarity matrix and reports its Pearson correlation with the human
ratings over the pairs i < j. The graph runs in optc's reference interpreter.

With ``--passes PIPELINE`` the pipeline runs on a second copy of the graph, calibrated on
``--calib-count`` news sentences and ``--calib-passages`` article leads from the calibration
articles; then it reports the compressed model's Pearson, its output fidelity on
``--holdout-count`` sentences from the held-out articles, and parameters/FLOPs before and after (at batch 1, seq 128).

Truncation matters: at ``--max-length 128`` (the default; 5 of the 50 documents are longer)
the baseline is the published 0.654; with no truncation (``--max-length 256``, the model's
sentence-transformers setting; the longest document is 154 tokens) it is 0.656.

    python bench/lee.py [--model out/minilm/minilm.onnx] [--max-length 128] [--torch-check]
    python bench/lee.py --passes 'default,prune-heads{ratio=0.25}' --calib-count 256 [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from optc import datasets, load_model, optimize
from optc.calibration import from_sentences, news_calibration
from optc.evaluate import sentence_embeddings, similarity_pearson
from optc.ir.analysis import summarize
from optc.passes.compression.fidelity import measure


def minilm_model(path: Path) -> Path:
    """The exported MiniLM ONNX file (exported with the TorchScript exporter if missing)."""
    if path.is_file():
        return path
    from optc import zoo

    print(f"exporting MiniLM to {path} ...", file=sys.stderr)
    inputs = zoo.tokenize(zoo.SAMPLE_SENTENCES[:2], max_length=32)
    return zoo.export_onnx(zoo.load_minilm(), inputs, path, dynamo=False, output_names=["last_hidden_state", "pooler_output"])


def torch_pearson(max_length: int) -> float:
    """The same benchmark computed by PyTorch (transformers' BertModel), as a cross-check."""
    import torch

    from optc import zoo

    model = zoo.load_minilm()
    enc = zoo.tokenize(datasets.lee_documents(), max_length=max_length, pad_to_max=False)
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state.double()
    m = enc["attention_mask"].double()[:, :, None]
    emb = ((hidden * m).sum(1) / m.sum(1)).numpy()
    return similarity_pearson(emb, datasets.lee_similarities())


def sizes(graph) -> dict:
    info = summarize(graph).to_json({"batch": 1, "seq": 128})
    return {"params": info["params"], "flops_b1_s128": info["flops"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="out/minilm/minilm.onnx", help="MiniLM as .onnx/.pt2/.optc-ir (exported if missing)")
    ap.add_argument("--max-length", type=int, default=128, help="truncate documents to N tokens (default 128)")
    ap.add_argument("--batch", type=int, default=10, help="documents/sentences per interpreter run")
    ap.add_argument("--passes", default="", metavar="PIPELINE", help="compress with this pipeline and compare")
    ap.add_argument("--calib-count", type=int, default=256, help="news sentences to calibrate on (calib articles)")
    ap.add_argument("--calib-passages", type=int, default=128, help="article leads (~110 words) to calibrate on too")
    ap.add_argument("--holdout-count", type=int, default=256, help="news sentences to measure fidelity on (held-out articles)")
    ap.add_argument("--torch-check", action="store_true", help="also compute the baseline with PyTorch")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    docs, human = datasets.lee_documents(), datasets.lee_similarities()
    path = minilm_model(Path(args.model))
    graph = load_model(path)
    t = time.perf_counter()
    base = similarity_pearson(sentence_embeddings(graph, docs, max_length=args.max_length, batch=args.batch), human)
    result = {"model": str(path), "max_length": args.max_length, "documents": len(docs),
              "baseline": {"pearson": round(base, 6), "seconds": round(time.perf_counter() - t, 2), **sizes(graph)}}
    if args.torch_check:
        result["baseline"]["pearson_torch"] = round(torch_pearson(args.max_length), 6)
    if args.passes:
        compressed = load_model(path)
        calib = news_calibration(compressed, args.calib_count, args.calib_passages, max_length=args.max_length)
        t = time.perf_counter()
        report = optimize(compressed, args.passes, calibration=calib)
        t_opt = time.perf_counter() - t
        pearson = similarity_pearson(sentence_embeddings(compressed, docs, max_length=args.max_length, batch=args.batch), human)
        holdout = from_sentences(datasets.news_sentences("holdout", args.holdout_count), graph,
                                 max_length=args.max_length, batch=args.batch)
        fid = measure(graph, compressed, holdout)
        result["compressed"] = {"pipeline": report.pipeline, "calib_sentences": args.calib_count,
                                "calib_passages": args.calib_passages,
                                "optimize_seconds": round(t_opt, 2), "pearson": round(pearson, 6),
                                "holdout_sentences": args.holdout_count, "holdout_fidelity": fid.as_dict(),
                                **sizes(compressed),
                                "passes": [r for r in report.reports if r.get("lossy")]}
    if args.json:
        print(json.dumps(result))
        return 0
    b = result["baseline"]
    print(f"Lee benchmark, {len(docs)} documents, max_length {args.max_length}, model {path}")
    print(f"  baseline    Pearson {b['pearson']:.4f}   params {b['params']:,}   FLOPs(b1,s128) {b['flops_b1_s128']:,}"
          + (f"   (PyTorch: {b['pearson_torch']:.4f})" if "pearson_torch" in b else ""))
    if "compressed" in result:
        c = result["compressed"]
        print(f"  compressed  Pearson {c['pearson']:.4f}   params {c['params']:,}   FLOPs(b1,s128) {c['flops_b1_s128']:,}")
        print(f"  pipeline    {c['pipeline']}  (calibrated on {c['calib_sentences']} news sentences + {c['calib_passages']} leads, {c['optimize_seconds']} s)")
        f = c["holdout_fidelity"]
        print(f"  held-out news fidelity ({c['holdout_sentences']} sentences): mean cosine {f['mean_cosine']:.4f}, "
              f"worst {f['worst_cosine']:.4f}, rel. error {f['relative_error']:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
