"""MMIM's training recipe (cpsl.train.recipe): its two optimisations, its optimisers and its learning-rate schedule.

- Stage 1 (``extra_step``): maximise lld = sum_pairs E[log q(y|x)] over the BA estimators' parameters with their
  own Adam (``lr_estimator``), the encoders run without gradient. ``stage1: step`` (default): before every main
  step, on its batch. ``stage1: epoch``: the official code's schedule, one pass of stage 1 over the training set
  (MOSEI: the first ``stage1_fraction`` of its batches) before each epoch's stage-2 steps, in its own shuffled
  order; that order's seed is drawn from the run's seeded RNG when the recipe is built, so it is the same on every
  rank and after a resume.
- Stage 2 (the loop's main step): ``mmim.losses``'s total with Adam (L2 weight decay, as the official code; not
  AdamW) over two groups: the text encoder at train.lr, the a/v encoders, fusion network and CPC predictors at
  train.lr_new_modules. The estimators get a gradient here too (from -beta lld) but are not in this optimiser
  (the official code: same), so stage 2 never moves them; the loop's clipping sees their gradient as the
  official code's did.
- After each main step the batch's projected samples enter the entropy memory (``after_backward``); the memory is
  emptied at the end of every epoch (the official code starts each epoch's pass with an empty one).
- Schedule: linear warmup over train.warmup_ratio of the steps (0 for MMIM on MOSI/MOSEI), then constant, halved
  (``lr_plateau_factor``) when the validation MAE (the official code's validation L1 loss) has not improved for
  more than ``lr_plateau_patience`` epochs: torch's ReduceLROnPlateau rule (relative threshold 1e-4), applied to the
  main optimiser only (the official code never steps its estimator scheduler).
- State (state/last.pt): the entropy memory, stage 1's optimiser, the plateau counters and the stage-1 order seed.
- Validation batches have no memory: valid/entropy and valid/total are left out (NaN in history.csv).
- DDP: stage 1 runs on the bare model and averages its gradients over ranks itself; the CPC negatives and the
  entropy covariances come from each rank's share of the batch (and its own memory), as with any per-rank batch
  statistic.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from cpsl.baselines.mmim.model import MMIM, estimator_loss, parameter_groups
from cpsl.train.data import BatchPlan, gather_batch
from cpsl.train.distributed import DistContext, all_reduce_sum
from cpsl.train.recipe import Recipe, optimizer_kernels

PLATEAU_THRESHOLD = 1e-4  # torch ReduceLROnPlateau's default relative threshold (the official code's scheduler)


def main_optimizer(model: MMIM, tp: dict, impl: str = "foreach") -> torch.optim.Optimizer:
    """Adam with L2 weight decay: the text encoder at train.lr, the rest of stage 2's parameters at
    train.lr_new_modules (null: train.lr); ``impl``: execution.optimizer_impl."""
    groups = parameter_groups(model)
    new_lr = tp["lr"] if tp["lr_new_modules"] is None else tp["lr_new_modules"]
    return torch.optim.Adam([{"params": groups["text"], "lr": tp["lr"]}, {"params": groups["main"], "lr": new_lr}],
                            lr=tp["lr"], weight_decay=tp["weight_decay"], **optimizer_kernels(impl))


def estimator_optimizer(model: MMIM, hp: dict) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameter_groups(model)["estimator"], lr=hp["lr_estimator"],
                            weight_decay=hp["weight_decay_estimator"])


def estimator_step(model: MMIM, batch: dict, optimizer: torch.optim.Optimizer, grad_clip: float,
                   ctx: DistContext | None = None) -> torch.Tensor:
    """Stage 1: one step of the estimators' optimiser maximising lld on ``batch`` (grad_clip 0: no clipping).
    Under DDP the gradients are averaged over ranks here: this step runs on the bare module, outside the DDP
    wrapper. Leaves no gradient behind. Returns -lld (detached)."""
    params = parameter_groups(model)["estimator"]
    optimizer.zero_grad(set_to_none=True)
    loss = estimator_loss(model, batch)
    loss.backward()
    grads = [p.grad for p in params]
    if ctx is not None and ctx.distributed:
        flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]), ctx) / ctx.world_size
        for g, averaged in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(averaged.view_as(g))
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


class Plateau:
    """ReduceLROnPlateau's rule (mode min, relative threshold, no cooldown) as an lr scale the schedule reads."""

    def __init__(self, patience: int, factor: float):
        self.patience, self.factor = patience, factor
        self.best, self.bad_epochs, self.scale = math.inf, 0, 1.0

    def update(self, value: float) -> None:
        if value < self.best * (1 - PLATEAU_THRESHOLD):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.scale *= self.factor
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs, self.scale = state["best"], state["bad_epochs"], state["scale"]


class MMIMRecipe(Recipe):
    terms = ("total", "task", "nce", "lld", "entropy")
    capture_blocker = ("MMIM's entropy estimate reads a memory of earlier batches kept as a host-side list of "
                       "tensors, and its stage 1 is host code")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.estimator_optimizer = estimator_optimizer(self.model, self.hp)
        self.plateau = Plateau(self.hp["lr_plateau_patience"], self.hp["lr_plateau_factor"])
        # the loop seeds every rank with the run's seed before building the model and this recipe
        self.stage1_seed = int(torch.randint(0, 2 ** 31 - 1, ()))

    # ------------------------------------------------------------------------------------------ stage 1
    def _stage1(self, batch: dict) -> None:
        estimator_step(self.model, batch, self.estimator_optimizer, self.params["train"]["grad_clip"], self.ctx)

    def extra_step(self, net, batch: dict, epoch: int, step: int) -> None:
        if self.hp["stage1"] == "step":
            self._stage1(batch)
        elif step == 0:  # a run resumed within an epoch has done this epoch's pass already
            for index in self.stage1_batches(epoch):
                self._stage1(gather_batch(self.train, index, self.ctx.device))

    def stage1_batches(self, epoch: int) -> list[torch.Tensor]:
        """This rank's batches of the epoch's stage-1 pass: the first ceil(stage1_fraction x) of a shuffled epoch."""
        plan = BatchPlan(len(self.train["label"]), self.params["train"]["batch_size"] // self.ctx.world_size,
                         self.ctx.rank, self.ctx.world_size, self.stage1_seed)
        n = math.ceil(self.hp["stage1_fraction"] * plan.steps_per_epoch)
        return list(plan.batches(epoch, device=self.ctx.device))[:n]

    # ------------------------------------------------------------------------------------------ stage 2
    def losses(self, out, batch: dict, objective: str = "main") -> dict:
        terms = self.losses_fn(out, batch["label"], self.hp)
        if "index" not in batch:  # validation: H(Y) is estimated with the training memory, which it has not
            return {k: v for k, v in terms.items() if k not in ("entropy", "total")}
        return terms

    def aux(self, out) -> dict:
        return {f"entropy/{pair}": features.detach() for pair, features in out.entropy_features.items()}

    def after_backward(self, stats, count, aux, batch, epoch, generator):
        self.model.remember({pair: aux[f"entropy/{pair}"] for pair in self.model.pairs}, batch["label"])
        return super().after_backward(stats, count, aux, batch, epoch, generator)

    def optimizer(self, tp: dict, impl: str = "foreach", capturable_on=None) -> torch.optim.Optimizer:
        # capturable_on is never set: the step is not capturable (capture_blocker)
        return main_optimizer(self.model, tp, impl)

    def lr_factor(self, total_steps: int, tp: dict) -> Callable[[int], float]:
        warmup = round(tp["warmup_ratio"] * total_steps)

        def factor(step: int) -> float:
            return (step / warmup if step < warmup else 1.0) * self.plateau.scale
        return factor

    # ------------------------------------------------------------------------------------------ epochs and state
    def end_epoch(self, epoch: int, row: dict) -> None:
        self.model.memory.reset()
        self.plateau.update(row["valid/mae"])

    def state_dict(self) -> dict:
        return {"memory": self.model.memory.state_dict(), "estimator_optimizer": self.estimator_optimizer.state_dict(),
                "plateau": self.plateau.state_dict(), "stage1_seed": self.stage1_seed}

    def load_state_dict(self, state: dict) -> None:
        self.model.memory.load_state_dict(state["memory"], self.ctx.device)
        self.estimator_optimizer.load_state_dict(state["estimator_optimizer"])
        self.plateau.load_state_dict(state["plateau"])
        self.stage1_seed = state["stage1_seed"]


RECIPE = MMIMRecipe  # what cpsl.train.recipes trains this baseline's row with
