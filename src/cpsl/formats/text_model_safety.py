"""What a text model's files may ask of cpsl: no code of their own, sizes a text encoder can have, weights that
load without unpickling code. Checked before transformers reads the folder (align's tokenizer, train's and
evaluate's encoder), so a hostile or broken folder costs one line naming the folder and the key, not a prompt,
someone else's Python, or an allocation of hundreds of GB.

- ``auto_map`` in ``config.json`` or ``tokenizer_config.json`` asks transformers to import the folder's own
  ``.py`` files (``trust_remote_code``; left unset, transformers asks on stdin and a piped ``y`` runs them).
  Every load passes ``trust_remote_code=False`` as well; this check makes the refusal one clear line.
- Sizes: each of :data:`SIZE_LIMITS` is an integer within its bound, and the parameters they imply fit
  :data:`MAX_PARAMETERS` (DeBERTa-v3-large has 0.43e9, the largest encoders a few 1e9).
- Weights: transformers loads ``pytorch_model.bin`` with ``torch.load(weights_only=True)`` (torch >= 2.6, the
  floor), which refuses any pickled object but tensors; :func:`weights_error` turns that refusal into one line.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

from cpsl.errors import PipelineError

# the config keys that size the tensors transformers allocates when it builds the model, and a bound on each
# (the largest public encoders and decoders stay well below: vocabularies of ~256k, hidden sizes of ~16k)
SIZE_LIMITS = {
    "vocab_size": 1 << 20,
    "hidden_size": 1 << 15,
    "num_hidden_layers": 1 << 9,
    "num_attention_heads": 1 << 10,
    "intermediate_size": 1 << 18,
    "max_position_embeddings": 1 << 20,
    "type_vocab_size": 1 << 10,
    "position_buckets": 1 << 16,
}
MAX_PARAMETERS = 4_000_000_000  # 16 GB of float32 weights, before the optimiser's two moments
CODE_KEY = "auto_map"
CONFIG_FILES = ("config.json", "tokenizer_config.json")


class TextModelError(PipelineError):
    """A text model's files that cpsl refuses to load; the message names the folder (or file) and the key."""


def check_text_model(resolved: str, configured: str | None = None) -> None:
    """Refuse, in one line, a text model (folder or cached HF id) that ships code or has absurd sizes; a model
    whose files are not available locally is left to the loader's own error."""
    shown = _shown(resolved, configured)
    for name in CONFIG_FILES:
        file = _local_file(resolved, name)
        if file is None:
            continue
        config = _read_json(file, shown)
        if CODE_KEY in config:
            raise TextModelError(
                f"{shown}: {name} key '{CODE_KEY}' asks to run the model folder's own Python code "
                f"({_code_files(config[CODE_KEY])}); cpsl never runs code from a model folder: use a model whose "
                f"architecture transformers ships (e.g. microsoft/deberta-v3-base), or remove '{CODE_KEY}' if the "
                f"folder's model_type is one of those")
        if name == "config.json":
            _check_sizes(config, shown)


def weights_error(exc: BaseException, resolved: str, configured: str | None = None) -> TextModelError | None:
    """The one-line error for a model folder whose weights cannot be loaded safely (a pickled object in
    ``pytorch_model.bin``, a truncated file); None when ``exc`` is not about the weights."""
    shown = _shown(resolved, configured)
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
        return TextModelError(
            f"{shown}: its weights cannot be loaded with torch.load(weights_only=True) "
            f"({_first_line(exc)}): the file holds pickled objects besides tensors, and cpsl never unpickles code "
            f"from a model folder; use the model's model.safetensors")
    if isinstance(exc, (EOFError, RuntimeError)) and any(
            word in str(exc) for word in ("PytorchStreamReader", "safetensors", "header", "Ran out of input")):
        return TextModelError(f"{shown}: its weights file is damaged ({_first_line(exc)}); download the model again")
    return None


def _shown(resolved: str, configured: str | None) -> str:
    folder = Path(resolved)
    what = "text model folder" if folder.is_dir() else "text model"
    return f"{what} {resolved}" if configured in (None, resolved) else f"{what} {resolved} (text.model {configured!r})"


def _local_file(resolved: str, name: str) -> Path | None:
    """``name`` of a local folder, or of an HF id already in the local cache (nothing is downloaded here)."""
    folder = Path(resolved)
    if folder.is_dir():
        return folder / name if (folder / name).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(resolved, name)
    except (ValueError, OSError):  # not a valid repo id: the loader says so
        return None
    return Path(found) if isinstance(found, str) else None


def _read_json(file: Path, shown: str) -> dict:
    try:
        config = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise TextModelError(f"{shown}: {file.name} is not valid JSON ({_first_line(exc)}); download the model "
                             f"again") from None
    if not isinstance(config, dict):
        raise TextModelError(f"{shown}: {file.name} must be a JSON object, got {type(config).__name__}")
    return config


def _code_files(auto_map) -> str:
    refs = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    modules = sorted({str(ref).split("--")[-1].split(".")[0] + ".py"
                      for value in refs for ref in (value if isinstance(value, list) else [value]) if ref})
    return ", ".join(modules) if modules else repr(auto_map)


def _check_sizes(config: dict, shown: str) -> None:
    sizes = {}
    for key, limit in SIZE_LIMITS.items():
        if key not in config:
            continue
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise TextModelError(
                f"{shown}: config.json key '{key}' is {value!r}, not an integer in [0, {limit}] (a text encoder's "
                f"{key} is far smaller; building the model would try to allocate it); fix config.json or use "
                f"another text model")
        sizes[key] = value
    hidden = sizes.get("hidden_size", 0)
    embeddings = (sizes.get("vocab_size", 0) + sizes.get("max_position_embeddings", 0)
                  + sizes.get("type_vocab_size", 0)) * hidden
    layers = sizes.get("num_hidden_layers", 0) * (4 * hidden * hidden + 2 * hidden * sizes.get("intermediate_size", 0))
    if embeddings + layers > MAX_PARAMETERS:
        named = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise TextModelError(
            f"{shown}: config.json sizes ({named}) make about {(embeddings + layers) / 1e9:.1f}e9 parameters, beyond "
            f"the {MAX_PARAMETERS / 1e9:.0f}e9 a text encoder here may have; fix config.json or use another text "
            f"model")


def _first_line(exc: BaseException) -> str:
    """The line of a library's message that says what is wrong (torch's unpickler names the refused global on a
    later line, after advice to load with weights_only=False that cpsl must not echo), without terminal colours."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    why = next((line for line in lines if "Unpickler error" in line), lines[0] if lines else type(exc).__name__)
    return why.split(" Please use")[0][:200]  # not torch's advice to allow-list the global
