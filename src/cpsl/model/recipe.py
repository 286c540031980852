"""The CP+SL rows' training recipe (A0-C5, T0): the Eq. 4 objective and, after the backward pass, Eq. 5-6 with GE
on the AME encoders (cpsl.train.recipe has the extension point; cpsl.train.step the generic step that runs it)."""
from __future__ import annotations

from typing import Mapping

import torch

from cpsl.config.ablations import Switches, switches_for
from cpsl.config.names import COUNTS, LOSS_TERMS, MODALITIES, TELEMETRY
from cpsl.config.param_sections import CPSection, GMSection, LossSection, section
from cpsl.model import losses as eq4
from cpsl.model.losses import total_loss
from cpsl.model.modulation import TELE, in_window, modulate_gradients
from cpsl.train.recipe import Recipe

ABS_A, ABS_V = 0, 1  # the recipe's step statistics: the unimodal heads' absolute-error sums over the batch


class LossStep(torch.nn.Module):
    """Model forward + Eq. 4 in one module, returning only the loss terms and the detached unimodal
    predictions. DDP wraps this, so the tensors it sees are exactly those the loss depends on: parameters
    that only feed switched-off (detached) terms are then correctly found unused."""

    def __init__(self, model: torch.nn.Module, loss: LossSection | Mapping, switches: Switches):
        super().__init__()
        self.model, self.loss, self.switches = model, section(LossSection, loss), switches

    def forward(self, batch: dict):
        out = self.model(batch["input_ids"], batch["attention_mask"], batch["acoustic"], batch["visual"])
        losses = total_loss(out, batch["label"], self.loss, self.switches)
        return losses, {m: out.uni[m].detach() for m in MODALITIES}


class CPSLRecipe(Recipe):
    """The CP+SL rows' recipe (A0-C5, T0; cpsl.train.recipe has the extension point): the Eq. 4 objective and,
    after the backward pass, Eq. 5-6 with GE on the AME encoders, driven by the unimodal heads' all-reduced
    training errors (one step statistic each)."""

    terms = LOSS_TERMS
    mean_columns = tuple(f"gm/{t}" for t in TELEMETRY)
    count_columns = COUNTS
    stats_size = 2

    def __init__(self, model, params: dict, row_id: str | None, ctx, switches: Switches | None = None):
        """``switches``: the row's (default: those of ``row_id``, which may then be None). The sections the
        equations read are built here, once per run, from the validated run params."""
        super().__init__(model, params, row_id, ctx)
        self.switches = switches if switches is not None else switches_for(row_id)
        self.loss = section(LossSection, params["loss"])
        self.gm, self.cp = section(GMSection, params["gm"]), section(CPSection, params["cp"])

    def loss_module(self) -> torch.nn.Module:
        return LossStep(self.model, self.loss, self.switches)

    def losses(self, out, batch: dict, objective: str = "main") -> dict:
        """Eq. 4 (validation; the training step computes it inside LossStep)."""
        return eq4.total_loss(out, batch["label"], self.loss, self.switches)

    def step_stats(self, aux: dict, batch: dict) -> torch.Tensor:
        label = batch["label"]
        return torch.stack([(aux["a"].float() - label).abs().sum(), (aux["v"].float() - label).abs().sum()])

    def after_backward(self, stats, count, aux, batch, epoch, generator):
        """Eq. 5-6 + GE on the AME encoders' gradients, from the all-reduced unimodal errors."""
        return modulate_gradients(self.model.modality_encoders(), stats[ABS_A].double() / count,
                                  stats[ABS_V].double() / count, epoch, self.gm, self.cp, self.switches, generator)

    @staticmethod
    def means(tele) -> torch.Tensor:
        return tele.vector[: len(TELEMETRY)]

    @staticmethod
    def counts(tele) -> torch.Tensor:
        """Per step: the Eq. 6 penalties applied (both modalities) and whether GE noise was added."""
        v = tele.vector
        return torch.stack([v[TELE["conflict_a"]] + v[TELE["conflict_v"]], v.new_full((), float(tele.ge))])

    def graph_key(self, epoch: int) -> bool:
        """Eq. 5-6 and GE add kernels only inside the modulation window: one graph per side of it."""
        return in_window(epoch, self.gm.start_epoch, self.gm.end_epoch)
