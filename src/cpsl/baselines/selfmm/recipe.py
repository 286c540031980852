"""Self-MM's training recipe (cpsl.train.recipe): Algorithm 1 of the paper on the loop's hooks.

Per step: ``losses`` reads the batch's current unimodal labels from the ULGM state (cpsl.baselines.selfmm.labels)
by the batch's training-set ``index`` and forms Eq. 13; after backward, ``after_backward`` all-gathers every rank's
indices and representations F_i^* and applies the ULGM update (Eq. 5-12) on every rank, so the per-segment state is
identical everywhere; ``state_dict`` carries it into state/last.pt (resume after SIGTERM/SIGKILL continues it).

Also as the official code (thuiar/Self-MM, trains/SELF_MM.py): Adam with coupled weight decay in its parameter
groups (cpsl.baselines.selfmm.parameter_groups) and constant learning rates (no schedule; ``train.warmup_ratio``
still warms up linearly when set, as on the demo).

Validation batches carry no index: the unimodal terms need generated labels, which only training segments have, so
they are left out there (valid/uni_* = NaN) and valid/total is the multimodal L1 alone (the official code's
validation loss). History columns ``ulgm/gap_<s>``: the epoch mean of mean_j |y_s(j) - y_m(j)| over the training
segments, how far the generated labels have moved from the multimodal ones.
"""
from __future__ import annotations

from typing import Callable

import torch

from cpsl.baselines.selfmm.labels import REPRESENTATIONS, SUBTASKS, UnimodalLabels
from cpsl.baselines.selfmm.model import LOSS_TERMS, attach_unimodal_labels, parameter_groups
from cpsl.train.distributed import all_gather_tensor
from cpsl.train.recipe import Recipe, StepTelemetry, optimizer_kernels


class SelfMMRecipe(Recipe):
    terms = LOSS_TERMS
    mean_columns = tuple(f"ulgm/gap_{s}" for s in SUBTASKS)
    capture_blocker = ("Self-MM's label generation (ULGM) rewrites per-segment state every step from all-gathered "
                       "batches, with epoch-dependent momentum weights")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        label = self.train["label"]
        self.ulgm = UnimodalLabels(len(label), self.model.feature_dims, rule=self.hp["ulgm_rule"],
                                   bound=self.hp["label_bound"]).to(label.device)
        self.ulgm.init_labels(label)

    def losses(self, out, batch: dict, objective: str = "main") -> dict:
        if "index" not in batch:  # validation: no generated labels (see the module docstring)
            task = (out.prediction.float() - batch["label"].float()).abs().mean()
            return {"total": task, "task": task}
        return self.losses_fn(attach_unimodal_labels(out, self.ulgm.targets(batch["index"])), batch["label"], self.hp)

    def aux(self, out) -> dict:
        return {f"f_{i}": out.features[i].detach() for i in REPRESENTATIONS}

    def optimizer(self, tp: dict, impl: str = "foreach", capturable_on=None) -> torch.optim.Optimizer:
        # capturable_on is never set: the step is not capturable (capture_blocker)
        return torch.optim.Adam(parameter_groups(self.model, self.hp, tp), lr=tp["lr"], **optimizer_kernels(impl))

    def lr_factor(self, total_steps: int, tp: dict) -> Callable[[int], float]:
        warmup = round(tp["warmup_ratio"] * total_steps)
        return lambda step: min(1.0, step / warmup) if warmup else 1.0

    def after_backward(self, stats, count, aux, batch, epoch, generator) -> StepTelemetry:
        index = all_gather_tensor(batch["index"], self.ctx)  # every rank applies every rank's update
        features = {i: all_gather_tensor(aux[f"f_{i}"].float(), self.ctx) for i in REPRESENTATIONS}
        self.ulgm.update(index, features, epoch)
        labels = self.ulgm.labels.double()
        return StepTelemetry((labels[1:] - labels[:1]).abs().mean(1))

    @staticmethod
    def means(tele: StepTelemetry) -> torch.Tensor:
        return tele.vector

    def state_dict(self) -> dict:
        return {"ulgm": {k: v.detach().cpu().clone() for k, v in self.ulgm.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.ulgm.load_state_dict(state["ulgm"])


RECIPE = SelfMMRecipe  # what cpsl.train.recipes trains this baseline's row with
