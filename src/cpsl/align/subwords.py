"""From word-level segments to fixed-length subword sequences.

Each segment's words are tokenised pre-split (``is_split_into_words=True``) in one batch by the tokenizer
of ``text_model_for(params)``; every word's acoustic/visual vector is repeated over that word's subwords
(``word_ids()``), [CLS]/[SEP] and padding get zero vectors, at most ``max_seq_len - 2`` subwords are
kept (the tail is cut, as the paper's "truncated/padded to length 50"), and ids are padded with the
tokenizer's pad id. The attention mask is 1 on [CLS], the kept subwords and [SEP].

Special tokens are placed here rather than by the tokenizer so that the word -> subword map is the
same for BERT-style (MiniLM) and DeBERTa-v2/v3 tokenizers; both define cls/sep/pad tokens.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cpsl.config.text_model import resolve_model_path
from cpsl.errors import PipelineError
from cpsl.formats.text_model_safety import check_text_model


class TokenizerError(PipelineError, ValueError):
    """The configured text model's tokenizer cannot be loaded or lacks [CLS]/[SEP]/pad."""


@dataclass
class Segment:
    """One labelled segment at word level: ``acoustic``/``visual`` rows match ``words``."""

    segment_id: str
    words: list[str]
    acoustic: np.ndarray
    visual: np.ndarray
    label: float


@dataclass
class SubwordBatch:
    input_ids: np.ndarray        # (N, L) int64
    attention_mask: np.ndarray   # (N, L) int8
    acoustic: np.ndarray         # (N, L, d_a) float32
    visual: np.ndarray           # (N, L, d_v) float32
    label: np.ndarray            # (N,) float32
    segment_id: list[str]
    truncated: list[str] = field(default_factory=list)  # ids of segments cut to max_seq_len - 2 subwords


class WordTokenizer:
    """Tokenises pre-split words in batches; ``encode`` returns, per segment, subword ids and the word
    index of each subword (-1 for a token tied to no word).

    Two backends with the same output: a local model folder holding ``tokenizer.json`` is read with the
    ``tokenizers`` library directly (importing transformers costs ~2-5 s, more than the whole alignment
    of MOSI); anything else (a hub id such as microsoft/deberta-v3-base, or a folder with only a
    sentencepiece model) goes through ``transformers.AutoTokenizer``. tests/test_subwords.py checks the
    two give identical ids and word maps.
    """

    def __init__(self, name: str, backend: str, impl, cls_id: int, sep_id: int, pad_id: int):
        self.name, self.backend, self._impl = name, backend, impl
        self.cls_token_id, self.sep_token_id, self.pad_token_id = cls_id, sep_id, pad_id

    def encode(self, batch: Sequence[Sequence[str]]) -> list[tuple[list[int], np.ndarray]]:
        batch = [list(words) for words in batch]
        if not batch:
            return []
        if self.backend == "tokenizers":
            encs = self._impl.encode_batch(batch, is_pretokenized=True, add_special_tokens=False)
            return [(e.ids, _word_index(e.word_ids)) for e in encs]
        enc = self._impl(batch, is_split_into_words=True, add_special_tokens=False, truncation=False)
        return [(enc["input_ids"][i], _word_index(enc.word_ids(i))) for i in range(len(batch))]


def _word_index(word_ids) -> np.ndarray:
    return np.array([-1 if w is None else w for w in word_ids], dtype=np.int64)


def _special_tokens(folder: Path) -> dict:
    tokens: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = folder / name
        if file.is_file():
            for role in ("cls_token", "sep_token", "pad_token"):
                value = json.loads(file.read_text()).get(role)
                if isinstance(value, dict):  # AddedToken serialisation
                    value = value.get("content")
                if isinstance(value, str) and role not in tokens:
                    tokens[role] = value
    return tokens


def _load_direct(model_name: str, folder: Path) -> WordTokenizer | None:
    from tokenizers import Tokenizer

    tokens = _special_tokens(folder)
    impl = Tokenizer.from_file(str(folder / "tokenizer.json"))
    impl.no_truncation()  # sentence-transformers folders save a 128-token truncation + padding
    impl.no_padding()
    ids = {role: impl.token_to_id(tokens[role]) if role in tokens else None
           for role in ("cls_token", "sep_token", "pad_token")}
    if any(v is None for v in ids.values()):
        return None  # let transformers work it out
    return WordTokenizer(model_name, "tokenizers", impl, ids["cls_token"], ids["sep_token"], ids["pad_token"])


def load_tokenizer(model_name: str, backend: str = "auto") -> WordTokenizer:
    """The tokenizer of ``model_name`` (an HF id, a folder, or ``package:<module>``).

    ``backend``: ``auto`` (direct ``tokenizers`` when a local tokenizer.json exists), ``tokenizers`` or
    ``transformers``.
    """
    path = resolve_model_path(model_name)
    check_text_model(path, model_name)  # no code of its own, sane sizes: before either backend reads it
    folder = Path(path)
    if backend in ("auto", "tokenizers") and (folder / "tokenizer.json").is_file():
        try:
            direct = _load_direct(model_name, folder)
        except Exception as exc:  # noqa: BLE001 - a tokenizer.json this tokenizers version cannot read
            if backend == "tokenizers":
                raise TokenizerError(f"text model {model_name!r} ({path}): cannot read tokenizer.json ({exc})") from exc
            direct = None
        if direct is not None:
            return direct
    if backend == "tokenizers":
        raise TokenizerError(f"text model {model_name!r} ({path}): no usable tokenizer.json with [CLS]/[SEP]/pad")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - offline hub errors, missing sentencepiece, bad folders
        raise TokenizerError(f"text model {model_name!r} ({path}): cannot load its tokenizer ({exc})") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise TokenizerError(f"text model {model_name!r}: a fast tokenizer is needed for word_ids()")
    ids = {role: getattr(tokenizer, role, None) for role in ("cls_token_id", "sep_token_id", "pad_token_id")}
    missing = [role.replace("_id", "") for role, v in ids.items() if v is None]
    if missing:
        raise TokenizerError(f"text model {model_name!r}: tokenizer has no {missing}")
    return WordTokenizer(model_name, "transformers", tokenizer, ids["cls_token_id"], ids["sep_token_id"],
                         ids["pad_token_id"])


def to_subwords(segments: Sequence[Segment], tokenizer: WordTokenizer, max_seq_len: int,
                acoustic_dim: int, visual_dim: int) -> SubwordBatch:
    """Tokenise and expand a list of segments into padded arrays (see module docstring)."""
    n, L, keep = len(segments), max_seq_len, max_seq_len - 2
    input_ids = np.full((n, L), tokenizer.pad_token_id, dtype=np.int64)
    attention = np.zeros((n, L), dtype=np.int8)
    acoustic = np.zeros((n, L, acoustic_dim), dtype=np.float32)
    visual = np.zeros((n, L, visual_dim), dtype=np.float32)
    labels = np.array([s.label for s in segments], dtype=np.float32)
    truncated: list[str] = []
    if n:
        for i, (seg, (ids, word_ids)) in enumerate(zip(segments, tokenizer.encode([s.words for s in segments]))):
            if len(ids) > keep:
                truncated.append(seg.segment_id)
                ids, word_ids = ids[:keep], word_ids[:keep]
            m = len(ids)
            input_ids[i, 0] = tokenizer.cls_token_id
            input_ids[i, 1:m + 1] = ids
            input_ids[i, m + 1] = tokenizer.sep_token_id
            attention[i, : m + 2] = 1
            real = word_ids >= 0  # a tokenizer may emit tokens tied to no word; they get zeros
            pos = np.flatnonzero(real) + 1
            acoustic[i, pos] = seg.acoustic[word_ids[real]]
            visual[i, pos] = seg.visual[word_ids[real]]
    return SubwordBatch(input_ids, attention, acoustic, visual, labels,
                        [s.segment_id for s in segments], truncated)
