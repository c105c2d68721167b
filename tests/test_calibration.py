"""Calibration/evaluation inputs: from an .npz of model inputs (split along the batch axis) and
from sentences with a Hugging Face tokenizer (MiniLM's folder), checked against the graph."""

from __future__ import annotations

import numpy as np
import pytest

from optc import zoo
from optc.calibration import (CalibrationError, InputsFile, from_npz, from_sentences, load_inputs_file,
                              read_sentences, tokenizer)
from optc.ir.text import parse_graph

SENTENCES = ["A short one.", "The central bank held rates steady on Tuesday, surprising some traders.",
             "Markets rallied.", "Compilers turn programs into fast machine code for many targets.", "Fine."]


def text_graph(ids="i64[batch, seq]", extra=""):
    return parse_graph(f"""graph g(%input_ids: {ids}, %attention_mask: {ids}{extra}) {{
      %y = Add(%input_ids, %attention_mask)
      return %y
    }}""")


def dense_graph(batch="batch"):
    return parse_graph(f"""graph g(%x: f32[{batch}, 8], %ids: i64[{batch}, seq]) {{
      %y = Relu(%x)
      return %y, %ids
    }}""")


@pytest.fixture(scope="module")
def tok_dir():
    return str(zoo.minilm_dir())


# -- .npz ------------------------------------------------------------------------------------------

def test_npz_splits_leading_axis(tmp_path):
    rng = np.random.default_rng(0)
    x, ids = rng.standard_normal((10, 8)).astype(np.float32), rng.integers(0, 100, (10, 5))
    np.savez(tmp_path / "c.npz", x=x, ids=ids)
    sets = from_npz(tmp_path / "c.npz", dense_graph(), batch=4)
    assert [s["x"].shape[0] for s in sets] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([s["x"] for s in sets]), x)
    np.testing.assert_array_equal(np.concatenate([s["ids"] for s in sets]), ids)
    assert len(from_npz(tmp_path / "c.npz", dense_graph())) == 2  # default 8 rows per set


def test_npz_static_batch(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.zeros((6, 8), np.float32), ids=np.zeros((6, 3), np.int64))
    sets = from_npz(tmp_path / "c.npz", dense_graph(batch="2"))
    assert [s["x"].shape for s in sets] == [(2, 8)] * 3
    with pytest.raises(CalibrationError, match="fixed at 2.*--calib-batch 2"):
        from_npz(tmp_path / "c.npz", dense_graph(batch="2"), batch=3)
    np.savez(tmp_path / "odd.npz", x=np.zeros((5, 8), np.float32), ids=np.zeros((5, 3), np.int64))
    with pytest.raises(CalibrationError, match="5 rows"):
        from_npz(tmp_path / "odd.npz", dense_graph(batch="2"))


@pytest.mark.parametrize("case, match", [
    ("names", r"missing input\(s\) 'ids'; unexpected input\(s\) 'idz'"),
    ("dtype", "input 'ids': expected element type i64, got i32"),
    ("rank", "input 'x': expected rank 2"),
    ("rows", "disagree on the leading .batch. axis: x=4, ids=3"),
    ("scalar", "'x' is a scalar"),
    ("missing", "no such file"),
])
def test_npz_errors(case, match, tmp_path):
    x, ids = np.zeros((4, 8), np.float32), np.zeros((4, 3), np.int64)
    arrays = {"names": {"x": x, "idz": ids}, "dtype": {"x": x, "ids": ids.astype(np.int32)},
              "rank": {"x": x[:, :, None], "ids": ids}, "rows": {"x": x, "ids": ids[:3]},
              "scalar": {"x": np.float32(1), "ids": ids}}.get(case)
    path = tmp_path / "c.npz"
    if arrays is not None:
        np.savez(path, **arrays)
    with pytest.raises(CalibrationError, match=match) as e:
        from_npz(path, dense_graph())
    assert "\n" not in str(e.value)


# -- text + tokenizer ------------------------------------------------------------------------------

def test_sentences_dynamic_padding_match_the_tokenizer(tok_dir):
    sets = from_sentences(SENTENCES, text_graph(), tokenizer_dir=tok_dir, max_length=64, batch=2)
    assert len(sets) == 3 and all(set(s) == {"input_ids", "attention_mask"} for s in sets)
    tok = tokenizer(tok_dir)
    for i, s in enumerate(sets):
        want = tok(SENTENCES[2 * i:2 * i + 2], padding=True, truncation=True, max_length=64, return_tensors="np")
        np.testing.assert_array_equal(s["input_ids"], want["input_ids"])
        np.testing.assert_array_equal(s["attention_mask"], want["attention_mask"])
        assert s["input_ids"].dtype == np.int64
        assert s["input_ids"].shape[1] == s["attention_mask"].sum(1).max()  # padded to the longest, no more
    assert sets[0]["input_ids"].shape[1] > sets[1]["input_ids"].shape[1]


def test_sentences_follow_the_graph_inputs(tok_dir):
    g = text_graph("i32[batch, seq]", extra=", %token_type_ids: i32[batch, seq]")
    sets = from_sentences(SENTENCES[:3], g, tokenizer_dir=tok_dir, max_length=6)
    assert len(sets) == 1 and set(sets[0]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(a.dtype == np.int32 for a in sets[0].values())
    assert sets[0]["input_ids"].shape == (3, 6)  # truncated to max_length
    fixed = from_sentences(SENTENCES[:2], text_graph("i64[2, 32]"), tokenizer_dir=tok_dir)
    assert fixed[0]["input_ids"].shape == (2, 32)  # a static sequence length is padded to


def test_default_tokenizer_is_minilm():
    sets = from_sentences(SENTENCES[:2], text_graph())
    assert sets[0]["input_ids"][0, 0] == 101  # [CLS] of MiniLM's uncased BERT vocabulary


def test_news_calibration_mixes_sentences_and_leads():
    from optc.calibration import news_calibration

    sets = news_calibration(text_graph(), sentences=40, passages=20, max_length=128)
    assert [len(s["input_ids"]) for s in sets] == [32, 8, 16, 4]  # sentence batches, then lead batches
    lengths = [int(s["attention_mask"].sum(1).mean()) for s in sets]
    assert max(lengths[:2]) < 60 <= min(lengths[2:])  # leads are the long inputs


def test_text_file(tmp_path, tok_dir):
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(["", SENTENCES[0], "  ", SENTENCES[1], SENTENCES[2]]) + "\n")
    assert read_sentences(path) == SENTENCES[:3]
    sets = load_inputs_file(path, text_graph(), tokenizer=tok_dir, max_length=32, batch=2)
    assert [s["input_ids"].shape[0] for s in sets] == [2, 1]


@pytest.mark.parametrize("case, match", [
    ("no_tokenizer", "a text file needs --tokenizer DIR"),
    ("empty", "holds no sentences"),
    ("binary", "not a UTF-8 text file"),
    ("bad_tokenizer", "not a Hugging Face tokenizer folder"),
    ("missing_tokenizer", "--tokenizer .*: no such folder"),
    ("foreign_input", "the model input 'x' is not one a tokenizer makes"),
])
def test_text_errors(case, match, tmp_path, tok_dir):
    path = tmp_path / "calib.txt"
    path.write_text("One sentence.\n")
    tok, graph = tok_dir, text_graph()
    if case == "no_tokenizer":
        tok = None
    elif case == "empty":
        path.write_text("\n \n")
    elif case == "binary":
        path.write_bytes(b"\xff\xfe\x00bad")
    elif case == "bad_tokenizer":
        tok = str(tmp_path)
    elif case == "missing_tokenizer":
        tok = str(tmp_path / "nope")
    elif case == "foreign_input":
        graph = dense_graph()
    with pytest.raises(CalibrationError, match=match) as e:
        InputsFile(str(path), tok).load(graph)
    assert "\n" not in str(e.value)
