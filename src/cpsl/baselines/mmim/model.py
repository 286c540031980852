"""MMIM, MultiModal InfoMax (Han, Chen, Poria, EMNLP 2021), with any Hugging Face text encoder (DeBERTa-v3: MMIM_d).

Model (``MMIM.forward``):
    h_t = T[:, 0]                  the text encoder's last-layer head ([CLS]) embedding, as the paper takes BERT's
    h_a = LSTM_a(A), h_v = LSTM_v(V)   final hidden state of a modality-specific LSTM, then Linear (``SequenceEncoder``)
    Z = tanh(W_2 tanh(W_1 Dropout([h_t; h_a; h_v])))      the fusion result
    y^ = W_3 Z                                             the prediction
Objective, two optimisations per training step on the same batch (their recipe: recipe.py):
    stage 1 (``estimator_loss``; the BA estimators' q(y|x) only, own optimiser): maximise lld = sum_pairs E[log q(y|x)]
    stage 2 (``losses``; everything else, main optimiser):
        L = L_task + alpha * sum_{m in t,a,v} L_N(Z, h_m) - beta * sum_pairs (lld_pair + H_pair)
  with L_task the mean absolute error, pairs (x -> y) text->visual and text->acoustic, L_N the CPC loss and H the
  mixture entropy estimate of y (equations in estimators.py). alpha is ``cpc_weight`` and beta ``ba_weight``
  (the official code's --alpha and --beta weigh these same terms).

Our inputs differ from the original's (see docs/baselines.md): MMIM was built for UNALIGNED a/v sequences (raw
COVAREP/FACET frames, their own lengths). Our cache is word-aligned to the subwords and padded to 50: the a/v
LSTMs read the word positions of each row (valid tokens minus [CLS] and [SEP], whose features are zero), one
vector per subword (a word split into several subwords repeats its averaged features), with the lengths taken from
the attention mask. The text encoder reads the same subword ids as every other row.

Other facts from the official code where the paper is silent (sources of every value in docs/baselines.md):
- a unidirectional LSTM reads the sequence; its output at the last word position is exactly the final state of a
  packed sequence, so it is read with a gather (no host sync, static shapes). ``rnn_bidirectional`` packs the
  sequence instead (lengths on the host), as the official code does for both directions.
- The official a/v encoders apply dropout (0.1) only with more than one LSTM layer; ``rnn_dropout`` is that value.
- Every weight matrix outside the text encoder starts from Xavier-normal initialisation, as in the official code.
- Stage 1 runs the encoders without gradient (only q(y|x) is updated, so their gradients would be discarded) and
  clips the estimators' gradient norm alone; the official code clips the norm over all gradients of the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from cpsl.baselines.mmim.estimators import (
    ConditionalGaussian,
    CPCPredictor,
    EntropyMemory,
    EntropyProjection,
    info_nce,
    mixture_entropy,
)
from cpsl.nn.losses import regression_loss
from cpsl.nn.tokens import trimmed_length, word_positions

# modality pair -> (x, y) of the BA bound I(x; y); the paper's pairs are tv and ta, va is the official --add_va option
PAIRS = {"tv": ("t", "v"), "ta": ("t", "a"), "va": ("v", "a")}  # the keys: mmim_spec.PAIRS
REPRESENTATIONS = ("t", "a", "v")
# the named terms of the objective ("total" is what stage 2 backpropagates)
LOSS_TERMS = ("total", "task", "nce", "lld", "entropy")


@dataclass
class MMIMOutput:
    prediction: torch.Tensor                     # (B,)
    fusion: torch.Tensor                         # Z (B, fusion_hidden)
    reps: dict[str, torch.Tensor]                # "t","a","v" -> h_m (B, d_m)
    lld: dict[str, torch.Tensor]                 # pair -> E[log q(y|x)] (scalar)
    nce: dict[str, torch.Tensor]                 # "t","a","v" -> L_N(Z, h_m) (scalar)
    entropy_features: dict[str, torch.Tensor]    # pair -> projected y of this batch (B, d_y // 4), with gradient
    entropy_history: dict[str, tuple | None]     # pair -> remembered (positive, negative) rows, None until full


class SequenceEncoder(nn.Module):
    """LSTM over the word positions of each row -> final hidden state -> Dropout -> Linear(hidden, out)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int, bidirectional: bool, dropout: float):
        super().__init__()
        # as in the official code, dropout acts (inside the LSTM and on its output) only with several layers
        dropout = dropout if layers > 1 else 0.0
        self.rnn = nn.LSTM(in_dim, hidden, num_layers=layers, dropout=dropout, bidirectional=bidirectional,
                           batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), out_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (B, L, d) with each row's sequence at positions 0..lengths-1 (lengths >= 1) -> (B, out_dim)."""
        if self.rnn.bidirectional:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, (h_n, _) = self.rnn(packed)
            last = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # the top layer's forward and backward final states
        else:
            outputs, _ = self.rnn(x)
            index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[-1])
            last = outputs.gather(1, index).squeeze(1)
        return self.out(self.dropout(last))


class FusionNetwork(nn.Module):
    """Z = tanh(W_2 tanh(W_1 Dropout(x))), prediction = W_3 Z (the official SubNet)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(in_dim, hidden)
        self.fuse = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.tanh(self.fuse(torch.tanh(self.hidden(self.dropout(x)))))
        return z, self.out(z).squeeze(-1)


class MMIM(nn.Module):
    def __init__(self, text_encoder: nn.Module, acoustic_dim: int, visual_dim: int, hp: dict):
        super().__init__()
        unknown = set(hp["ba_pairs"]) - set(PAIRS)
        if unknown or not hp["ba_pairs"]:
            raise ValueError(f"mmim ba_pairs: expected a non-empty subset of {', '.join(PAIRS)}, got {hp['ba_pairs']}")
        self.hp = hp
        self.pairs = tuple(hp["ba_pairs"])
        self.text_encoder = text_encoder
        self.dims = {"a": acoustic_dim, "v": visual_dim}
        rep_dims = {"t": text_encoder.config.hidden_size, "a": hp["acoustic_out"], "v": hp["visual_out"]}
        rnn = {"layers": hp["rnn_layers"], "bidirectional": hp["rnn_bidirectional"], "dropout": hp["rnn_dropout"]}
        self.acoustic_encoder = SequenceEncoder(acoustic_dim, hp["acoustic_hidden"], hp["acoustic_out"], **rnn)
        self.visual_encoder = SequenceEncoder(visual_dim, hp["visual_hidden"], hp["visual_out"], **rnn)
        self.fusion = FusionNetwork(sum(rep_dims.values()), hp["fusion_hidden"], hp["fusion_dropout"])
        self.cpc = nn.ModuleDict({m: CPCPredictor(hp["fusion_hidden"], rep_dims[m], hp["cpc_layers"])
                                  for m in REPRESENTATIONS})
        self.estimators = nn.ModuleDict({p: ConditionalGaussian(rep_dims[PAIRS[p][0]], rep_dims[PAIRS[p][1]])
                                         for p in self.pairs})
        self.entropy_projections = nn.ModuleDict({p: EntropyProjection(rep_dims[PAIRS[p][1]]) for p in self.pairs})
        self.memory = EntropyMemory(hp["entropy_memory"])
        for name, p in self.named_parameters():
            if not name.startswith("text_encoder.") and p.dim() > 1:
                nn.init.xavier_normal_(p)
        # drop all-padding trailing positions (as CPSLModel does); a trainer on a GPU turns this off (static shapes)
        self.trim_padding = True

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, acoustic: torch.Tensor,
               visual: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unimodal representations h_t, h_a, h_v."""
        mask = attention_mask.bool()
        for name, x, d in (("acoustic", acoustic, self.dims["a"]), ("visual", visual, self.dims["v"])):
            if x.dim() != 3 or x.shape[:2] != mask.shape or x.shape[-1] != d:
                raise ValueError(f"MMIM: {name} must be (B,L,{d}) matching attention_mask {tuple(mask.shape)}, "
                                 f"got {tuple(x.shape)}")
        keep = trimmed_length(mask) if self.trim_padding else None
        if keep is not None:
            input_ids, attention_mask = input_ids[:, :keep], attention_mask[:, :keep]
            mask, acoustic, visual = mask[:, :keep], acoustic[:, :keep], visual[:, :keep]
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # word positions start at 1 (after [CLS]) and are contiguous; a row without words reads one zero vector
        lengths = word_positions(mask).sum(1).clamp_min(1)
        return {"t": text[:, 0],
                "a": self.acoustic_encoder(acoustic[:, 1:], lengths),
                "v": self.visual_encoder(visual[:, 1:], lengths)}

    def log_likelihoods(self, reps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """pair -> E[log q(y|x)] with the current estimators."""
        return {p: self.estimators[p].log_likelihood(reps[PAIRS[p][0]], reps[PAIRS[p][1]], self.hp["lld_form"])
                for p in self.pairs}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, acoustic: torch.Tensor,
                visual: torch.Tensor) -> MMIMOutput:
        reps = self.encode(input_ids, attention_mask, acoustic, visual)
        fusion, prediction = self.fusion(torch.cat([reps[m] for m in REPRESENTATIONS], dim=-1))
        return MMIMOutput(
            prediction=prediction,
            fusion=fusion,
            reps=reps,
            lld=self.log_likelihoods(reps),
            nce={m: info_nce(reps[m], self.cpc[m](fusion), self.hp["cpc_negatives"]) for m in REPRESENTATIONS},
            entropy_features={p: self.entropy_projections[p](reps[PAIRS[p][1]]) for p in self.pairs},
            # the memory holds training batches: evaluation never reads it (its predictions do not need it)
            entropy_history={p: self.memory.history(p) if self.training else None for p in self.pairs},
        )

    def remember(self, entropy_features: dict[str, torch.Tensor], label: torch.Tensor) -> None:
        """After a training step: add the batch's projected samples (``out.entropy_features``) to the memory."""
        for p in self.pairs:
            self.memory.push(p, entropy_features[p], label)


def entropy(out: MMIMOutput, label: torch.Tensor) -> torch.Tensor:
    """sum over pairs of H(Y) from the remembered batches plus this one (0 for a pair whose memory is not full)."""
    total = out.prediction.new_zeros(())
    for pair, features in out.entropy_features.items():
        history = out.entropy_history[pair]
        if history is not None:
            total = total + mixture_entropy(torch.cat([history[0], features.float()]),
                                            torch.cat([history[1], label.float().reshape(-1)]))
    return total


def losses(out: MMIMOutput, label: torch.Tensor, hp: dict) -> dict[str, torch.Tensor]:
    """Stage 2's objective and its named terms (scalars): L = task + alpha nce - beta (lld + entropy)."""
    terms = {
        "task": regression_loss(out.prediction, label, "l1"),
        "nce": sum(out.nce.values()),
        "lld": sum(out.lld.values()),
        "entropy": entropy(out, label),
    }
    terms["total"] = terms["task"] + hp["cpc_weight"] * terms["nce"] - hp["ba_weight"] * (terms["lld"]
                                                                                          + terms["entropy"])
    return {k: terms[k] for k in LOSS_TERMS}


def parameter_groups(model: MMIM) -> dict[str, list[nn.Parameter]]:
    """The three parameter groups: "text" (the text encoder), "estimator" (q(y|x) of the BA bounds: stage 1's
    optimiser) and "main" (a/v encoders, fusion, CPC predictors). The frozen entropy projections are in none."""
    text = [p for p in model.text_encoder.parameters() if p.requires_grad]
    estimator = list(model.estimators.parameters())
    taken = {id(p) for p in text + estimator}
    main = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    return {"text": text, "main": main, "estimator": estimator}


def estimator_loss(model: MMIM, batch: dict) -> torch.Tensor:
    """Stage 1's loss -lld, with the encoders run without gradient (only q(y|x) is trained in stage 1)."""
    with torch.no_grad():
        reps = model.encode(batch["input_ids"], batch["attention_mask"], batch["acoustic"], batch["visual"])
    return -sum(model.log_likelihoods(reps).values())


# what cpsl.nn.zoo builds and trains for this baseline's row (looked up by name: cpsl.baselines.registry)
MODEL = MMIM
LOSSES = losses
