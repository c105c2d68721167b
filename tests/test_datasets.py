"""The offline text datasets: the news split (by article, no leaks, deterministic) and the Lee
benchmark files."""

from __future__ import annotations

import numpy as np
import pytest

from optc import datasets


def test_news_split_is_by_article_and_disjoint():
    calib = datasets.news_articles("calib")
    holdout = datasets.news_articles("holdout")
    calib_ids, holdout_ids = {i for i, _ in calib}, {i for i, _ in holdout}
    assert calib_ids.isdisjoint(holdout_ids)
    assert len(holdout) / (len(calib) + len(holdout)) == pytest.approx(0.2, abs=0.01)
    calib_texts = {" ".join(t.split()) for _, t in calib}
    assert not any(" ".join(t.split()) in calib_texts for _, t in holdout)  # no article copied across


def test_no_held_out_sentence_was_seen_in_calibration():
    calib = set(datasets.news_sentences("calib"))
    holdout = datasets.news_sentences("holdout")
    assert len(holdout) > 10_000 and len(calib) > 50_000
    assert calib.isdisjoint(holdout)


def test_news_sentences_deterministic_counts_and_lengths():
    a = datasets.news_sentences("calib", 200)
    assert a == datasets.news_sentences("calib", 200)
    assert len(a) == 200 and len(set(a)) > 190
    other = datasets.news_sentences("calib", 200, seed=1)
    assert other != a
    assert set(datasets.news_sentences("holdout", 50)) <= set(datasets.news_sentences("holdout"))
    assert all(6 <= len(s.split()) <= 60 for s in a)
    short = datasets.news_sentences("calib", 100, min_words=3, max_words=8)
    assert all(3 <= len(s.split()) <= 8 for s in short)


def test_news_passages_are_article_leads_of_whole_sentences():
    leads = datasets.news_passages("calib", 50)
    assert leads == datasets.news_passages("calib", 50) and leads != datasets.news_passages("calib", 50, seed=1)
    articles = {" ".join(t.split()) for _, t in datasets.news_articles("calib")}
    for p in leads:
        assert any(a.startswith(p) for a in articles)  # the article's lead, whole sentences
        assert 20 <= len(p.split()) and (len(p.split()) <= 110 or len(datasets.split_sentences(p)) == 1)
    assert set(datasets.news_passages("holdout")).isdisjoint(datasets.news_passages("calib"))
    assert 60 <= np.median([len(p.split()) for p in leads]) <= 110


def test_sentence_split_and_unknown_split():
    text = 'He left. "It rained," she said. Then  it stopped! "Was it over?" Yes.'
    assert datasets.split_sentences(text) == ["He left.", '"It rained," she said.', "Then it stopped!", '"Was it over?"', "Yes."]
    with pytest.raises(datasets.DatasetError, match="unknown split"):
        datasets.news_sentences("train")


def test_lee_documents_and_ratings():
    docs = datasets.lee_documents()
    assert len(docs) == 50 and all(len(d.split()) > 20 for d in docs)
    m = datasets.lee_similarities()
    assert m.shape == (50, 50)
    np.testing.assert_array_equal(m, m.T)
    np.testing.assert_array_equal(np.diag(m), np.ones(50))
    assert m.min() >= 0 and m.max() <= 1
    off = m[np.triu_indices(50, 1)]
    assert 0.1 < off.mean() < 0.5 and off.std() > 0.05  # real ratings, not a constant fill
