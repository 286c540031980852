"""How one row is trained: ``Recipe``, the training loop's one extension point.

The loop (cpsl.train.loop) and its step (cpsl.train.step) are the same for every row: the batches (with their
training-set indices), DDP, the three ``execution.step`` modes, the collapse guard, clipping, the optimizer and schedule
steps, checkpoints and resume, validation on rank 0, selection on the validation MAE, history.csv and DVCLive. What
differs between rows is asked of the row's recipe, at fixed points; every method has a default, so a baseline that
trains one loss with one optimizer (MAG) overrides almost nothing. A row gets its recipe from cpsl.train.recipes
(``recipe_for``): the CP+SL rows' (cpsl.model.recipe.CPSLRecipe: Eq. 4 and the gradient modulation of Eq. 5-6 +
GE) or its baseline's.

When the loop calls what (``R`` is the recipe, ``net`` the DDP-wrapped ``R.loss_module()``):

  build      R.optimizer(train) and R.lr_factor(total_steps, train) (a LambdaLR factor, stepped per step);
             R.capture_blocker: None, or why the step can never be captured in a CUDA graph (``auto`` then runs
             sync-free and says why in train_summary.json; ``cuda_graph`` refuses)
  per step   R.extra_step(net, batch, epoch, step)       before the main step, on the same batch: an extra
                                                          optimisation with the recipe's own optimizer (MMIM's
                                                          stage 1); host code allowed, not captured
             then the step body (device work only; captured in a CUDA graph unless capture_blocker):
               losses, aux = net(batch)                   model forward + R.losses(out, batch) and R.aux(out)
               losses["total"].backward()                 (DDP averages the gradients)
               stats = [R.step_stats(aux, batch), count, stop vote, non-finite flags]: ONE all-reduce
               tele = R.after_backward(stats[:R.stats_size], count, aux, batch, epoch, generator)
                                                          gradient hooks (CP+SL: Eq. 5-6 + GE) and per-step state
                                                          updates (Self-MM's labels; all-gather them yourself:
                                                          cpsl.train.distributed.all_gather_tensor)
             gradient norm + guard, clipping, optimizer.step(), scheduler.step()
  per epoch  R.means(tele) / R.counts(tele) are averaged / summed into the history columns R.mean_columns /
             R.count_columns; then, on EVERY rank, R.end_epoch(epoch, row) with the same row (train means and,
             from rank 0, the validation metrics): per-epoch schedules or state
  state      R.state_dict() / R.load_state_dict(): saved in state/last.pt with the model, optimizer, scheduler and
             RNG, restored on resume (per-segment state, extra optimizers: identical after SIGTERM/SIGKILL)

Batches are dicts of tensors: input_ids, attention_mask, acoustic, visual (raw cache features), label and, in
training, ``index`` (each segment's row in the cache's train split; identical meaning on every rank). Validation
and evaluation batches have no ``index``. Evaluation needs only ``prediction`` from the model (cpsl.nn.zoo).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from cpsl.config import rows
from cpsl.train.distributed import DistContext


@dataclass
class StepTelemetry:
    """What a step reports besides its losses: a float64 vector on the device (``Recipe.means``/``counts`` read it).
    Recipes may subclass it (CP+SL: cpsl.model.modulation.Telemetry); it must stay a dataclass with ``vector``."""

    vector: torch.Tensor


class ObjectiveStep(nn.Module):
    """Model forward + the recipe's losses in one module (what DDP wraps, so that DDP sees exactly the tensors the
    backpropagated loss depends on). ``forward(batch, objective)`` returns (losses, aux)."""

    def __init__(self, model: nn.Module, recipe: "Recipe"):
        super().__init__()
        self.model = model
        self.recipe = recipe  # a plain attribute: not a module, holds no parameters

    def forward(self, batch: dict, objective: str = "main"):
        out = self.model(batch["input_ids"], batch["attention_mask"], batch["acoustic"], batch["visual"])
        return self.recipe.losses(out, batch, objective), self.recipe.aux(out)


def linear_warmup_decay(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """lr factor: step/warmup for the first ``warmup_steps`` steps, then linear decay to 0 at the last step (the
    Hugging Face "linear" schedule)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def text_and_new_groups(model: nn.Module, tp: dict, weight_decay: float | None = None) -> list[dict]:
    """Two AdamW groups: the text encoder at train.lr, every other module at train.lr_new_modules (null: train.lr)."""
    new_lr = tp["lr"] if tp["lr_new_modules"] is None else tp["lr_new_modules"]
    text = list(model.text_encoder.parameters())
    text_ids = {id(p) for p in text}
    new = [p for p in model.parameters() if id(p) not in text_ids]
    groups = [{"params": text, "lr": tp["lr"]}, {"params": new, "lr": new_lr}]
    if weight_decay is not None:
        for group in groups:
            group["weight_decay"] = weight_decay
    return groups


def split_no_decay(groups: list[dict], model: nn.Module) -> list[dict]:
    """Each group split in two: biases and LayerNorm parameters without weight decay (BERT's fine-tuning recipe,
    which MAG's and ITHP's code use), the rest as it was."""
    exempt = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    exempt |= {id(p) for name, p in model.named_parameters() if name.endswith("bias")}
    out = []
    for group in groups:
        keep = [p for p in group["params"] if id(p) not in exempt]
        free = [p for p in group["params"] if id(p) in exempt]
        out += [{**group, "params": keep}, {**group, "params": free, "weight_decay": 0.0}]
    return [g for g in out if g["params"]]


def make_optimizer(model: nn.Module, tp: dict, no_decay_on_biases_and_norms: bool = False, impl: str = "foreach",
                   capturable_on: torch.device | None = None) -> torch.optim.Optimizer:
    """AdamW over :func:`text_and_new_groups` (both groups follow the schedule's factor), optionally without weight
    decay on biases and LayerNorm parameters.

    ``impl`` (execution.optimizer_impl): ``foreach`` (a few dozen multi-tensor kernels per step) or ``fused`` (one
    fused kernel per parameter group and dtype); the same update up to float rounding. ``capturable_on`` (a CUDA
    device, for ``execution.cuda_graph_scope: step``): a capturable AdamW whose learning rates are tensors on that
    device, which the scheduler updates in place, so that a CUDA graph replaying the step reads the current rate."""
    groups = text_and_new_groups(model, tp)
    if no_decay_on_biases_and_norms:
        groups = split_no_decay(groups, model)
    capturable = capturable_on is not None
    if capturable:
        for group in groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=capturable_on)
    optimizer = torch.optim.AdamW(groups, lr=tp["lr"], weight_decay=tp["weight_decay"], capturable=capturable,
                                  **optimizer_kernels(impl))
    if capturable:
        optimizer.register_load_state_dict_post_hook(lambda opt: _rates_on(opt, capturable_on))
    return optimizer


def optimizer_kernels(impl: str) -> dict:
    """torch.optim keyword for execution.optimizer_impl: ``{"fused": True}`` or ``{"foreach": True}``."""
    return {"fused": True} if impl == "fused" else {"foreach": True}


def _rates_on(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """After a resume: the loaded learning rates (read onto the CPU, or saved as floats) back as tensors on the
    device, which the graph then captures and the scheduler updates in place."""
    for group in optimizer.param_groups:
        lr = group["lr"]
        if not (isinstance(lr, torch.Tensor) and lr.device == torch.device(device)):
            group["lr"] = torch.as_tensor(float(lr), device=device)


class Recipe:
    """The default recipe: one objective (the model's ``losses``), AdamW with the text encoder at train.lr and the
    rest at train.lr_new_modules, linear warmup/decay, no statistics, no state. See the module docstring."""

    terms: tuple[str, ...] = ("total", "task")  # loss terms, "total" first: history columns train/<t>, valid/<t>
    mean_columns: tuple[str, ...] = ()          # history columns averaged over the epoch's steps (NaN steps skipped)
    count_columns: tuple[str, ...] = ()         # history columns summed over the epoch's steps (integers)
    stats_size = 0                              # length of step_stats (all-reduced with the loop's statistics)
    capture_blocker: str | None = None          # why the step body cannot be a CUDA graph; None: it can
    no_decay_on_biases_and_norms = False        # weight decay 0 on biases and LayerNorm parameters

    def __init__(self, model: nn.Module, params: dict, row_id: str | None, ctx: DistContext | None, losses_fn=None,
                 train: dict | None = None):
        """``params``: the run's (cpsl.config.rows.run_params); ``losses_fn(out, label, hp)``: the model's objective
        (cpsl.nn.zoo); ``train``: the whole training split as tensors on the device (TENSOR_KEYS; ``index`` in a
        batch points into it), for recipes with per-segment state. A subclass passes them all on."""
        self.model, self.params, self.row_id, self.ctx = model, params, row_id, ctx
        self.hp = rows.hyper(params, row_id) if row_id is not None and rows.is_baseline(row_id) else None
        self.losses_fn = losses_fn
        self.train = train

    # ------------------------------------------------------------------------------------------ the objective
    def loss_module(self) -> nn.Module:
        return ObjectiveStep(self.model, self)

    def losses(self, out, batch: dict, objective: str = "main") -> dict:
        return self.losses_fn(out, batch["label"], self.hp)

    def aux(self, out) -> dict:
        """Detached model outputs that step_stats / after_backward need (none by default)."""
        return {}

    # ------------------------------------------------------------------------------------------ optimisation
    def optimizer(self, tp: dict, impl: str = "foreach", capturable_on: torch.device | None = None
                  ) -> torch.optim.Optimizer:
        """``impl``: execution.optimizer_impl; ``capturable_on``: the device of a capturable optimizer (the AdamW step
        inside the CUDA graph), never set for a recipe with a ``capture_blocker``."""
        return make_optimizer(self.model, tp, self.no_decay_on_biases_and_norms, impl, capturable_on)

    def lr_factor(self, total_steps: int, tp: dict) -> Callable[[int], float]:
        return linear_warmup_decay(total_steps, round(tp["warmup_ratio"] * total_steps))

    def extra_step(self, net: nn.Module, batch: dict, epoch: int, step: int) -> None:
        """An extra optimisation on this batch before the main step (none by default)."""

    # ------------------------------------------------------------------------------------------ inside the step
    def step_stats(self, aux: dict, batch: dict) -> torch.Tensor:
        return torch.zeros(0, device=batch["label"].device)

    def after_backward(self, stats: torch.Tensor, count: torch.Tensor, aux: dict, batch: dict, epoch: int,
                       generator: torch.Generator | None) -> StepTelemetry:
        return StepTelemetry(torch.zeros(0, dtype=torch.float64, device=batch["label"].device))

    @staticmethod
    def means(tele: StepTelemetry) -> torch.Tensor:
        return tele.vector[:0]

    @staticmethod
    def counts(tele: StepTelemetry) -> torch.Tensor:
        return tele.vector[:0]

    def graph_key(self, epoch: int):
        """Steps with different keys need different CUDA graphs (their kernels differ)."""
        return None

    # ------------------------------------------------------------------------------------------ epochs and state
    def end_epoch(self, epoch: int, row: dict) -> None:
        """Called on every rank after each epoch's validation, with the same history row on every rank."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state but the saved run has some: {sorted(state)}")
