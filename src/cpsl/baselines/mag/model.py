"""MAG: the Multimodal Adaptation Gate inside a pretrained text encoder (Rahman et al., "Integrating Multimodal
Information in Large Pretrained Transformers", ACL 2020). With DeBERTa-v3 as the text encoder it is the paper's
Table 1 row "MAG (d)"; with BERT-base, "MAG (b)".

Per token, Z is the text encoder's hidden state entering layer ``injection_layer`` (0: the embedding output), A and
V the word-aligned acoustic and visual features of that token:

    g_v = ReLU(W_gv [V; Z] + b_v),   g_a = ReLU(W_ga [A; Z] + b_a)          gates          (MAG-1)  AdaptationGate
    H = g_a * (W_a A) + g_v * (W_v V) + b_H                                  displacement   (MAG-2)  AdaptationGate
    alpha = min(||Z||_2 / (||H||_2 + epsilon) * beta, 1)                      scaling        (MAG-3)  scaling_factor
    Z' = Dropout(LayerNorm(Z + alpha * H))                                    shift          (MAG-4)  AdaptationGate

and Z' continues through the remaining layers in Z's place. So the shift never has a larger norm than beta times
the text state (||alpha H|| <= beta ||Z||), and equals it whenever H is large. The prediction is regressed from the
last layer: [CLS] -> dense + tanh (BERT's pooler) -> Dropout -> Linear(d, 1) (cpsl.nn.heads.PoolerRegressionHead).
Loss: ``loss`` (mse, as the official code; or l1) between prediction and label.

How it is injected: a forward pre-hook on the text encoder's ``encoder.layer[injection_layer]`` replaces that
layer's input hidden states by Z'; the text encoder is the unmodified Hugging Face model, so any BERT-architecture
(the demo's MiniLM, BERT-base) or DeBERTa-v2/v3 encoder works. The inputs are the cache's raw features (as the
official code's), zero at [CLS], [SEP] and padding, where W_a A = W_v V = 0 and so H = b_H.

Deviations from the official code (github.com/WasifurRahman/BERT_multimodal_transformer), following the paper's
equations: W_a and W_v have no bias and H has its own bias b_H (the code puts the biases inside W_a A and W_v V and
has no b_H); epsilon only in the denominator (the code also replaces a zero ||H|| by 1, which changes nothing:
then alpha H = 0 either way). The pooler is newly initialised (our text encoders are loaded without one).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cpsl.errors import ParamsError
from cpsl.nn.heads import PoolerRegressionHead
from cpsl.nn.losses import regression_loss
from cpsl.nn.tokens import trimmed_length


@dataclass
class MAGOutput:
    prediction: torch.Tensor  # (B,)


def scaling_factor(z: torch.Tensor, h: torch.Tensor, beta: float, epsilon: float) -> torch.Tensor:
    """(MAG-3) alpha = min(||Z|| / (||H|| + epsilon) * beta, 1) per token: (..., 1), to scale H (..., d)."""
    ratio = torch.linalg.vector_norm(z, dim=-1) / (torch.linalg.vector_norm(h, dim=-1) + epsilon) * beta
    return ratio.clamp(max=1.0).unsqueeze(-1)


class AdaptationGate(nn.Module):
    """(MAG-1, MAG-2, MAG-4): the gated displacement H of the text states Z by the acoustic and visual features."""

    def __init__(self, text_dim: int, acoustic_dim: int, visual_dim: int, beta_shift: float, epsilon: float,
                 dropout: float):
        super().__init__()
        self.gate_a = nn.Linear(acoustic_dim + text_dim, text_dim)  # W_ga, b_a
        self.gate_v = nn.Linear(visual_dim + text_dim, text_dim)    # W_gv, b_v
        self.proj_a = nn.Linear(acoustic_dim, text_dim, bias=False)  # W_a
        self.proj_v = nn.Linear(visual_dim, text_dim, bias=False)    # W_v
        self.bias_h = nn.Parameter(torch.zeros(text_dim))            # b_H
        self.layer_norm = nn.LayerNorm(text_dim)
        self.dropout = nn.Dropout(dropout)
        self.beta_shift, self.epsilon = beta_shift, epsilon

    def displacement(self, z: torch.Tensor, acoustic: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """(MAG-1, MAG-2) H = g_a * (W_a A) + g_v * (W_v V) + b_H."""
        acoustic, visual = acoustic.to(z.dtype), visual.to(z.dtype)
        g_a = F.relu(self.gate_a(torch.cat([acoustic, z], dim=-1)))
        g_v = F.relu(self.gate_v(torch.cat([visual, z], dim=-1)))
        return g_a * self.proj_a(acoustic) + g_v * self.proj_v(visual) + self.bias_h

    def forward(self, z: torch.Tensor, acoustic: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        h = self.displacement(z, acoustic, visual)
        return self.dropout(self.layer_norm(z + scaling_factor(z, h, self.beta_shift, self.epsilon) * h))


def encoder_layers(text_encoder: nn.Module) -> nn.ModuleList:
    """The transformer layers of a Hugging Face encoder (BERT, MiniLM, DeBERTa-v2/v3: ``encoder.layer``)."""
    layers = getattr(getattr(text_encoder, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"MAG: the text encoder ({type(text_encoder).__name__}) has no encoder.layer list to "
                         f"inject the gate into")
    return layers


class MAGModel(nn.Module):
    """Text encoder with the adaptation gate before layer ``hp["injection_layer"]``, and the regression head."""

    def __init__(self, text_encoder: nn.Module, acoustic_dim: int, visual_dim: int, hp: dict):
        super().__init__()
        layers = encoder_layers(text_encoder)
        k = int(hp["injection_layer"])
        if not 0 <= k < len(layers):
            raise ParamsError(f"baselines.mag: injection_layer {k} is out of range for a text encoder with "
                              f"{len(layers)} layers (0 = after the embeddings, at most {len(layers) - 1})")
        text_dim = text_encoder.config.hidden_size
        self.text_encoder = text_encoder
        self.gate = AdaptationGate(text_dim, acoustic_dim, visual_dim, hp["beta_shift"], hp["epsilon"],
                                   hp["dropout"])
        self.head = PoolerRegressionHead(text_dim, hp["head_dropout"], hp["pooling"])
        self.dims = {"acoustic": acoustic_dim, "visual": visual_dim}
        self.injection_layer = k
        self._av: tuple[torch.Tensor, torch.Tensor] | None = None  # the batch's a/v while the encoder runs
        layers[k].register_forward_pre_hook(self._shift, with_kwargs=True)
        # drop trailing all-padding positions (a host read); the training step turns this off on a GPU
        self.trim_padding = True

    def _shift(self, _layer, args, kwargs):
        """Forward pre-hook of the injection layer: its input hidden states Z become Z' (MAG-4)."""
        if self._av is None:
            raise RuntimeError("MAG: the text encoder ran outside MAGModel.forward (no acoustic/visual to gate with)")
        acoustic, visual = self._av
        if args:
            return (self.gate(args[0], acoustic, visual), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self.gate(kwargs["hidden_states"], acoustic, visual)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, acoustic: torch.Tensor,
                visual: torch.Tensor) -> MAGOutput:
        mask = attention_mask.bool()
        for name, x in (("acoustic", acoustic), ("visual", visual)):
            if x.dim() != 3 or x.shape[:2] != mask.shape or x.shape[-1] != self.dims[name]:
                raise ValueError(f"MAG: {name} must be (B,L,{self.dims[name]}) matching attention_mask "
                                 f"{tuple(mask.shape)}, got {tuple(x.shape)}")
        keep = trimmed_length(mask) if self.trim_padding else None
        if keep is not None:  # per-token or masked ops only: valid outputs change by float round-off at most
            input_ids, attention_mask, mask = input_ids[:, :keep], attention_mask[:, :keep], mask[:, :keep]
            acoustic, visual = acoustic[:, :keep], visual[:, :keep]
        self._av = (acoustic, visual)
        try:
            hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        finally:
            self._av = None
        return MAGOutput(prediction=self.head(hidden, mask))


def losses(out: MAGOutput, label: torch.Tensor, hp: dict) -> dict[str, torch.Tensor]:
    """MAG's objective: the regression loss ``hp["loss"]`` (mse or l1) alone."""
    task = regression_loss(out.prediction, label, hp["loss"])
    return {"total": task, "task": task}


# what cpsl.nn.zoo builds and trains for this baseline's row (looked up by name: cpsl.baselines.registry)
MODEL = MAGModel
LOSSES = losses
