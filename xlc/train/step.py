"""One training step, the same for the Ray worker and the train bench (`xlc bench train`).

    loss = engine(batch, loss=True)       backbone + replicated head, in the DeepSpeed engine's forward
      or features = engine(batch)         backbone only [B, d]; a ShardedHead outside the engine (own
         loss = head.loss(features, ...)  AdamW, never averaged) takes the features
    engine.backward(loss)                 local gradients (the loss scaled by 1 / accumulation steps)
    engine.allreduce_gradients()          data-parallel average (DeepSpeed; ZeRO reduce-scatter at stage > 0)
    sparse / head optimisers, engine.step()   at the gradient-accumulation boundary only

A replicated head runs inside the engine's forward because ZeRO-3 partitions its parameters and gathers
them only around calls of the wrapped module (`xlc.train.model.Model`). Each micro-batch's loss is
returned as a detached device tensor: reading it (`.item()`) waits for the device, so the loop reads it
only when it logs.

The learning rate follows one schedule (`xlc.train.schedule`): the engine steps a `LambdaLR` over the
multiplier, and at each boundary the optimisers outside it take `initial lr x multiplier(n)` for the same
n, the engine's optimiser-step count (which DeepSpeed checkpoints, so a resumed run continues the schedule).
Gradient clipping: the engine clips the backbone (+ replicated head) by DeepSpeed's `gradient_clipping`; a
sharded head is clipped by its own norm (over all of its shards), separately; the sparse tables are not
clipped (SparseAdam normalises each row's step by its own second moment).

Embedding tables with sparse gradients (`nn.EmbeddingBag(sparse=True)`, the `mlp` backbone's input layer)
are the remedy for 10^5+ input features: a batch touches a few thousand rows of the table, so their
gradient is the touched rows only, DeepSpeed all-reduces it as an all-gather of (row ids, rows), and
`torch.optim.SparseAdam` (lazy Adam: the moments of untouched rows stay as they are, no weight decay)
updates those rows alone. A dense table would all-reduce and AdamW-update every row every step. DeepSpeed
reduces sparse gradients only without ZeRO and in fp32, so with ZeRO > 0 or bf16/fp16 the tables are made
dense (the same function, dense AdamW).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import torch

from xlc.heads import ShardedHead
from xlc.train import engine as xengine
from xlc.train.evaluation import all_reduce

# "head": a sharded head's loss; a replicated head's runs in the engine's forward and is timed under "forward"
PHASES = ("forward", "head", "backward", "allreduce", "optimiser")


def sparse_tables(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Weights of embedding tables that produce sparse gradients."""
    return [m.weight for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))
            and m.sparse]


def make_dense(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
            m.sparse = False


def clip_sharded_head(head: ShardedHead, max_norm: float) -> None:
    """Clip a label-sharded head's gradient to `max_norm` by the norm of the whole head: the squared norms of
    the label-sharded entries are summed over ranks, replicated entries counted once (every rank agrees)."""
    params = {name: p for name, p in head.named_parameters() if p.grad is not None}
    squares = {name: p.grad.detach().double().pow(2).sum() for name, p in params.items()}
    sharded = sum(v for name, v in squares.items() if name in head.label_sharded)
    replicated = sum(v for name, v in squares.items() if name not in head.label_sharded)
    norm = (all_reduce(torch.as_tensor(sharded).clone()) + replicated).sqrt()
    torch.nn.utils.clip_grads_with_norm_(list(params.values()), max_norm, norm)


class PhaseTimer:
    """Wall seconds per phase of a step (a CUDA sync before each reading, so kernels are charged where they run)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self._last = device, defaultdict(float), None

    def start(self) -> None:
        self._sync()
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        self._sync()
        now = time.perf_counter()
        self.seconds[phase] += now - self._last
        self._last = now

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class Step:
    """Owns the DeepSpeed engine and the optimisers outside it; `step(batch)` trains on one micro-batch.

    `multiplier`: the lr schedule (`xlc.train.schedule.lr_multiplier`; None: constant). `clip_head`: the max
    gradient norm of a sharded head, by its own norm (None: no clipping); the engine's comes from `ds_config`.
    """

    def __init__(self, model: torch.nn.Module, head: torch.nn.Module, ds_config: dict, *, lr: float,
                 head_lr: float, weight_decay: float, world: int,
                 multiplier: Callable[[int], float] | None = None, clip_head: float | None = None):
        self.head, self.world, self.clip_head = head, world, clip_head
        self.multiplier = multiplier or (lambda step: 1.0)
        self.sharded = isinstance(head, ShardedHead)
        if xengine.zero_stage(ds_config) > 0 or xengine.low_precision(ds_config):
            make_dense(model)
        tables = sparse_tables(model)
        table_ids = {id(p) for p in tables}
        backbone = [p for p in model.backbone.parameters() if id(p) not in table_ids]
        groups = [{"params": backbone, "lr": lr}]
        if not self.sharded:
            groups.append({"params": list(head.parameters()), "lr": head_lr})
        self.engine = xengine.initialize(model, groups, ds_config, lr=lr, weight_decay=weight_decay,
                                         lr_lambda=multiplier)
        if xengine.zero_stage(ds_config) == 3 and not self.sharded:
            xengine.gather_with_calls(model, head)
        self.engine.enable_backward_allreduce = False  # `step` reduces explicitly, so the phases can be timed
        self.head_opt = (xengine.adamw(head.parameters(), lr=head_lr, weight_decay=weight_decay)
                         if self.sharded else None)
        self.sparse_opt = torch.optim.SparseAdam(tables, lr=lr) if tables else None
        for opt in self.optimisers().values():
            for group in opt.param_groups:
                group["initial_lr"] = group["lr"]  # the base the schedule multiplies (as torch's schedulers keep it)
        if tables:  # DeepSpeed rebuilds the reduced gradients as COO tensors; their invariants hold by construction
            torch.sparse.check_sparse_tensor_invariants.disable()

    def optimisers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers outside the engine, by checkpoint name."""
        return {name: opt for name, opt in (("head", self.head_opt), ("sparse", self.sparse_opt)) if opt}

    def step(self, batch, timer: PhaseTimer | None = None) -> torch.Tensor:
        """Forward, backward and (at an accumulation boundary) the optimiser steps; the detached loss."""
        mark = timer.mark if timer else (lambda phase: None)
        if timer:
            timer.start()
        if self.sharded:
            features = self.engine(batch)  # [B, d]
            if self.world > 1:
                # The sharded loss is the global-batch mean, so this rank's feature gradient is already its
                # share of the global gradient; DeepSpeed then averages over ranks, so undo its 1/world.
                features.register_hook(lambda grad: grad * self.world)
            mark("forward")
            loss = self.head.loss(features, batch.targets)
        else:
            loss = self.engine(batch, loss=True)
            mark("forward")
        mark("head")
        self.engine.backward(loss)
        mark("backward")
        self.engine.allreduce_gradients()
        mark("allreduce")
        if self.engine.is_gradient_accumulation_boundary():
            if self.sharded and self.clip_head is not None:
                clip_sharded_head(self.head, self.clip_head)
            scale = self.multiplier(self.engine.global_steps)  # optimiser steps taken so far, as the engine's LambdaLR
            for opt in self.optimisers().values():
                for group in opt.param_groups:
                    group["lr"] = group["initial_lr"] * scale
                opt.step()
                opt.zero_grad(set_to_none=True)
        self.engine.step()  # steps (and zeroes) at the boundary only
        mark("optimiser")
        return loss.detach()
