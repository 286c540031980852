"""The text backbone: any Hugging Face encoder, loaded offline or built from a config.

``load_text_encoder`` returns the bare encoder (``AutoModel``) whose ``last_hidden_state`` is T in Eq. 2.
Choices:
- weights are always loaded as float32 (transformers 5 defaults to the checkpoint's dtype, which may be
  half precision); bf16 is the trainer's autocast decision, not the checkpoint's;
- a pooler layer (e.g. BERT/MiniLM's) is removed: the model pools H itself (heads.py), and a pooler
  that never receives a gradient would make DDP fail on unused parameters;
- DeBERTa-v2/v3's relative-position buckets are memoised per (lengths, buckets, device): transformers rebuilds
  them on every forward and copies a host scalar to the device while doing so (``make_log_bucket_position``),
  which is a synchronisation and cannot be captured in a CUDA graph. Same tensor, computed once.
"""
from __future__ import annotations

import contextlib

import torch
import transformers
from torch import nn

from cpsl.config.text_model import resolve_model_path
from cpsl.formats.text_model_safety import check_text_model, weights_error


def tiny_deberta_config(vocab_size: int = 30522) -> transformers.DebertaV2Config:
    """A 2-layer DeBERTa-v3-style config (hidden 32) for tests: relative attention as in v3-base."""
    return transformers.DebertaV2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        relative_attention=True,
        position_buckets=16,
        max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        type_vocab_size=0,
    )


def _memo_key(value):
    """A tensor argument stands for its length (dim -2) and device; anything else (sizes, buckets, a device) for
    itself."""
    return ("tensor", value.size(-2), value.device) if isinstance(value, torch.Tensor) else value


def memoise_deberta_relative_positions() -> None:
    """Replace transformers' DeBERTa-v2 ``build_relative_position`` by a memoised one (idempotent). The buckets
    depend only on the two lengths, the bucket settings and the device; nothing writes into them. Both signatures
    transformers has used are covered: ``(query_layer, key_layer, bucket_size, max_position)`` (5.x, the floor) and
    ``(query_size, key_size, bucket_size, max_position, device)`` (4.x, e.g. 4.40); the wrapper passes the call
    through unchanged and keys the cache on what the result depends on."""
    from transformers.models.deberta_v2 import modeling_deberta_v2 as deberta

    original = deberta.build_relative_position
    if getattr(original, "memoised_by_cpsl", False):
        return
    cache: dict = {}

    def build_relative_position(*args, **kwargs):
        key = (tuple(_memo_key(a) for a in args), tuple(sorted((k, _memo_key(v)) for k, v in kwargs.items())))
        if key not in cache:
            cache[key] = original(*args, **kwargs)
        return cache[key]

    build_relative_position.memoised_by_cpsl = True
    deberta.build_relative_position = build_relative_position


@contextlib.contextmanager
def _quiet_loading():
    """transformers 5 draws a progress bar for reading a local checkpoint's ~100 tensors (milliseconds) in every
    train log: noise, switched off for the load only."""
    hf_logging = transformers.utils.logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _float32() -> dict:
    """from_pretrained's dtype argument: ``dtype`` since transformers 4.56, ``torch_dtype`` before (4.40 rejects
    ``dtype``). Below the floor (pyproject.toml), but it costs one line and keeps the loader usable there."""
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype": torch.float32} if (major, minor) >= (4, 56) else {"torch_dtype": torch.float32}


def load_text_encoder(name_or_path: str | transformers.PretrainedConfig, pretrained: bool = True) -> nn.Module:
    """Return the HF encoder for ``name_or_path`` (HF id, local folder or ``package:<module>``).

    A ``PretrainedConfig`` or ``pretrained=False`` builds the architecture with random weights (no
    download of weights; a name still needs its config.json locally or in the HF cache).
    """
    if isinstance(name_or_path, transformers.PretrainedConfig):
        model = transformers.AutoModel.from_config(name_or_path)
    else:
        path = resolve_model_path(name_or_path)
        check_text_model(path, name_or_path)  # no code of its own, sane sizes: before transformers reads it
        try:
            if pretrained:
                with _quiet_loading():
                    model = transformers.AutoModel.from_pretrained(path, trust_remote_code=False, **_float32())
            else:
                model = transformers.AutoModel.from_config(
                    transformers.AutoConfig.from_pretrained(path, trust_remote_code=False))
        except OSError as exc:
            raise OSError(
                f"text model {name_or_path!r} (resolved to {path!r}) could not be loaded offline: {exc}"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - only the weights' refusals become one line; the rest re-raised
            refused = weights_error(exc, path, name_or_path)
            if refused is None:
                raise
            raise refused from exc
    model = model.float()
    if model.config.model_type == "deberta-v2":
        memoise_deberta_relative_positions()
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model
