"""The full model of Section 2: text encoder + AME (Eq. 1) + fusion/injection (Eq. 2) + heads.

Pipeline of ``CPSLModel.forward``:
  A, V --MinMaxNormalizer (word positions; global batch under DDP in training)--> X_a, X_v
  X_m --AME (Eq. 1)--> mu_m, var_m, Z_m           T = text_encoder(input_ids).last_hidden_state
  Z_a, Z_v --fusion--> F_av --Eq. 2--> H = T + beta * tanh(W_p F_av)   (P_av only at word positions)
  H --LayerNorm, pooling, task head--> prediction; Z_m --> unimodal heads and reconstruction decoders.

Word positions (``feature_mask``): the valid tokens minus the first ([CLS]) and the last valid one ([SEP]) of
each row. The aligner gives those special tokens all-zero a/v features (and puts padding at the end), so they
carry no acoustic or visual information and are left out of every a/v statistic, loss and injection.

Pooling must see the sequence: H = T + beta P_av is formed after the LAST text layer, so nothing mixes tokens
afterwards, and [CLS] pooling would read only the [CLS] position, where P_av is zero: the a/v path would never
reach the prediction. The default ``model.pooling: mean`` pools over the valid tokens (see docs/method.md).

The architecture does not depend on the ablation: with switch ``ame`` off Z = mu (the variance head is still
built, so the Statistical Loss stays defined); with switch ``av`` off (the text-only reference T0) H = T.
The normalisation is all-reduced only in training mode: the training mini-batch is the global batch split
over ranks, while evaluation runs on one process and must never wait on other ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import transformers
from torch import nn

from cpsl.config.ablations import Switches
from cpsl.config.names import MODALITIES
from cpsl.config.param_sections import ModelSection, section
from cpsl.model.ame import AdaptiveModalityEncoder
from cpsl.model.fusion import FusionBlock, ResidualInjection
from cpsl.model.heads import ReconstructionDecoder, TaskHead, UnimodalHead
from cpsl.nn.normalize import MinMaxNormalizer
from cpsl.nn.text_encoder import load_text_encoder
from cpsl.nn.tokens import trimmed_length, word_positions


@dataclass
class ModelOutput:
    prediction: torch.Tensor            # (B,)
    uni: dict[str, torch.Tensor]        # {"a","v"} -> (B,)
    mu: dict[str, torch.Tensor]         # {"a","v"} -> (B,L,h)
    var: dict[str, torch.Tensor]        # {"a","v"} -> (B,L,h), positive
    z: dict[str, torch.Tensor]          # {"a","v"} -> (B,L,h)
    recon: dict[str, torch.Tensor]      # {"a","v"} -> (B,L,d_m)
    inputs: dict[str, torch.Tensor]     # {"a","v"} -> normalised inputs X_m (B,L,d_m)
    mask: torch.Tensor                  # (B,L) bool, True at valid tokens
    feature_mask: torch.Tensor          # (B,L) bool, True at word positions (valid, not [CLS]/[SEP])
    fused: torch.Tensor | None = field(default=None)  # F_av (B,L,d_f); the diversity loss reads it


class CPSLModel(nn.Module):
    def __init__(self, text_encoder: nn.Module, acoustic_dim: int, visual_dim: int, config: ModelSection,
                 sample: bool = True, use_av: bool = True):
        """``config``: the run's ``model`` section (its values live in params.yaml, nowhere else); ``sample``:
        draw Z in training (switch ame); ``use_av``: inject P_av at all (off: T0)."""
        super().__init__()
        text_dim, h = text_encoder.config.hidden_size, config.intermediate_dim
        self.text_encoder = text_encoder
        dims = {"a": acoustic_dim, "v": visual_dim}
        self.ame = nn.ModuleDict(
            {m: AdaptiveModalityEncoder(dims[m], h, config.encoder_dropout, config.var_eps, sample)
             for m in MODALITIES}
        )
        self.fusion = FusionBlock(h, config.fusion_dim, config.fusion)
        self.inject = ResidualInjection(config.fusion_dim, text_dim, config.beta)
        self.task_head = TaskHead(text_dim, config.classifier_dropout, config.pooling)
        self.uni_heads = nn.ModuleDict({m: UnimodalHead(h, config.classifier_dropout) for m in MODALITIES})
        self.decoders = nn.ModuleDict({m: ReconstructionDecoder(h, dims[m]) for m in MODALITIES})
        self.normalizers = nn.ModuleDict({m: MinMaxNormalizer(dims[m], config.eval_norm) for m in MODALITIES})
        self.dims = dims
        self.use_av = use_av
        # drop all-padding trailing positions (below); the training step turns this off on a GPU (static shapes)
        self.trim_padding = True

    def modality_encoders(self) -> dict[str, nn.Module]:
        """The AME encoders {"a","v"} whose gradients Eq. 5/6 scale."""
        return {m: self.ame[m] for m in MODALITIES}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, acoustic: torch.Tensor,
                visual: torch.Tensor) -> ModelOutput:
        mask = attention_mask.bool()
        raw = {"a": acoustic, "v": visual}
        for m in MODALITIES:
            if raw[m].dim() != 3 or raw[m].shape[:2] != mask.shape or raw[m].shape[-1] != self.dims[m]:
                raise ValueError(
                    f"CPSLModel: {'acoustic' if m == 'a' else 'visual'} must be (B,L,{self.dims[m]}) matching "
                    f"attention_mask {tuple(mask.shape)}, got {tuple(raw[m].shape)}"
                )
        # Drop trailing positions that are padding in every row: every op below is per-token or masked,
        # so they change no valid output, and MSA segments are mostly far shorter than max_seq_len. It reads the
        # mask on the host: on a GPU that is a synchronisation and a new shape per batch (no CUDA graph).
        keep = trimmed_length(mask) if self.trim_padding else None
        if keep is not None:
            input_ids, attention_mask, mask = input_ids[:, :keep], attention_mask[:, :keep], mask[:, :keep]
            raw = {m: raw[m][:, :keep] for m in MODALITIES}
        fmask = word_positions(mask)
        sync = self.training and dist.is_available() and dist.is_initialized()
        inputs = {m: self.normalizers[m](raw[m], fmask, sync=sync) for m in MODALITIES}
        mu, var, z = {}, {}, {}
        for m in MODALITIES:
            mu[m], var[m], z[m] = self.ame[m](inputs[m])
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        fused = self.fusion(z["a"], z["v"])
        h = self.inject(text, fused, fmask) if self.use_av else text
        return ModelOutput(
            prediction=self.task_head(h, mask),
            uni={m: self.uni_heads[m](z[m], fmask) for m in MODALITIES},
            mu=mu,
            var=var,
            z=z,
            recon={m: self.decoders[m](z[m]) for m in MODALITIES},
            inputs=inputs,
            mask=mask,
            feature_mask=fmask,
            fused=fused,
        )


def build_model(
    params: dict,
    switches: Switches,
    acoustic_dim: int,
    visual_dim: int,
    text_model: str | transformers.PretrainedConfig,
    pretrained: bool = True,
) -> CPSLModel:
    """Build the model from ``params["model"]`` (read once, as cpsl.config.param_sections.ModelSection);
    ``switches.ame``
    decides whether Z is sampled in training, ``switches.av`` whether P_av is injected at all (off: the text-only
    reference row T0)."""
    if "model" not in params:
        raise KeyError("build_model: params has no 'model' section")
    try:
        model = section(ModelSection, params["model"])
    except KeyError as exc:
        raise KeyError(f"build_model: {exc.args[0]}") from None
    return CPSLModel(load_text_encoder(text_model, pretrained), acoustic_dim, visual_dim, model, sample=switches.ame,
                     use_av=switches.av)
