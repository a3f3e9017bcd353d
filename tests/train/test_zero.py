"""`Step` at DeepSpeed ZeRO stages 0-3, fp32 and bf16, gradient accumulation 1 and 2, on 2 gloo ranks against
one process; the checkpoints they write read back as the fp32 weights (`checkpoint.module_state`).

Reference (one process, plain torch in float64, the same initial weights): optimiser step n sees a global batch
of G = 16 rows and takes loss = mean over the G rows; backward; the engine's parameters (backbone + a
replicated head) clipped by their joint norm to CLIP, a sharded head by its own; AdamW (LR for the backbone,
HEAD_LR for the head, weight decay WD) at lr x multiplier(n) (warmup 2, linear decay over 5 steps).
DeepSpeed: `Step` on 2 ranks with micro-batch G / (2 A) and accumulation A, so A = 2 with micro-batch 4 and
A = 1 with micro-batch 8 both meet the reference's batch; its loss of step n is the mean over ranks and
micro-batches of `Step.step`'s loss. The curves agree to FP32_RTOL relative in fp32, and to BF16_RTOL in
bf16 (bf16 weights and activations; the fp32 master weights are what the optimiser updates).
ZeRO-3 runs with `stage3_param_persistence_threshold: 0`, so every tensor of this small model is partitioned
(the shipped JSONs keep tensors under 10^5 elements whole on every rank).

Resume on another worker count (`xlc.train.persist`, slow): 2 ranks train RESUME_AT steps on global batches of
12 rows and checkpoint; 3 ranks, and 1, resume from it (through DeepSpeed's universal checkpoint) and train the
rest. The resumed fp32 weights and a sharded head's rows and moments equal the saved ones exactly, and the loss
curve across the move follows the same float64 reference to FP32_RTOL (BF16_RTOL in bf16).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.distributed as dist

from tests.helpers import Payload, assert_close
from xlc import config as xconfig
from xlc.bench.train import synthetic_batch
from xlc.data.collate import Batch
from xlc.data.schema import DatasetMeta
from xlc.errors import DataError
from xlc.train import checkpoint as ckpt
from xlc.train import engine as xengine
from xlc.train import persist
from xlc.train.checkpoint import Progress
from xlc.train.model import build_model
from xlc.train.schedule import lr_multiplier
from xlc.train.step import Step

META = DatasetMeta(name="t", num_labels=30, multi_label=False, num_features=500)
ROWS, NNZ, STEPS = 16, 6, 5  # global batch per optimiser step, features per row, optimiser steps
LR, HEAD_LR, WD, CLIP = 1e-2, 2e-2, 0.1, 0.5
MULTIPLIER = lr_multiplier("linear", 2, STEPS)
FP32_RTOL = 1e-6  # measured: at most 8e-8 at any stage
BF16_RTOL = 1e-2  # measured: at most 6e-4 at ZeRO 1-3, 2.4e-3 at ZeRO-0 (gradients summed in bf16 there)


def _cfg(head: str) -> xconfig.RunConfig:
    return xconfig.from_dict({"name": "t", "data": "unused", "head": {"name": head},
                              "backbone": {"hidden": [16], "dropout": 0.0}})


def _ds_config(stage: int, bf16: bool, accumulation: int, micro_batch: int | None = None) -> dict:
    cfg = xengine.deepspeed_config(None, batch_size=micro_batch or ROWS // (2 * accumulation), lr=LR, weight_decay=WD,
                                   clip_grad_norm=CLIP)
    cfg.update(gradient_accumulation_steps=accumulation, bf16={"enabled": bf16},
               zero_optimization={"stage": stage, "stage3_param_persistence_threshold": 0})
    return cfg


def _global_batch(n: int, rows: int = ROWS) -> Batch:
    return synthetic_batch(torch.Generator().manual_seed(1000 + n), rows, NNZ, META.num_features, META.num_labels)


def _rows(batch: Batch, lo: int, hi: int) -> Batch:
    """Rows [lo, hi) of a batch with NNZ features per row."""
    return Batch(targets=batch.targets[lo:hi], feat_idx=batch.feat_idx[lo * NNZ:hi * NNZ],
                 feat_offsets=torch.arange(hi - lo) * NNZ, feat_val=batch.feat_val[lo * NNZ:hi * NNZ])


def _reference(backbone, head, sharded: bool, rows: int = ROWS) -> tuple[list[float], list[float]]:
    """(loss per optimiser step, the largest pre-clipping norm per step) of the module docstring's reference."""
    backbone, head = backbone.double(), head.double()
    opt = torch.optim.AdamW([{"params": list(backbone.parameters()), "lr": LR},
                             {"params": list(head.parameters()), "lr": HEAD_LR}], weight_decay=WD)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, MULTIPLIER)
    clipped = ([list(backbone.parameters()), list(head.parameters())] if sharded
               else [list(backbone.parameters()) + list(head.parameters())])
    losses, norms = [], []
    for n in range(STEPS):
        batch = _global_batch(n, rows)
        loss = head.loss(backbone(batch), batch.targets)
        loss.backward()
        norms.append(max(float(torch.nn.utils.clip_grad_norm_(params, CLIP)) for params in clipped))
        opt.step()
        schedule.step()
        opt.zero_grad()
        losses.append(float(loss))
    return losses, norms


def _full_head(head, sharded: bool):
    """A copy of `head` in one process: for a sharded head, a `softmax` head holding every rank's rows."""
    if not sharded:
        return copy.deepcopy(head)
    full = build_model(_cfg("softmax"), META)[1]
    state = {}
    for name, shard in head.state_dict().items():
        parts = [torch.empty_like(shard) for _ in range(dist.get_world_size())]  # 30 labels: equal shards
        dist.all_gather(parts, shard.contiguous())
        state[name] = torch.cat(parts)
    full.load_state_dict(state)
    return full


def _train_and_compare(rank: int, world: int, cases: list[tuple], out: str) -> None:
    """Train every case (stage, bf16, accumulation, head) with `Step`; a replicated-head case also saves a
    checkpoint under `out` and keeps rank 0's live weights (gathered) and the engine's top-5 of a probe batch
    (`Model.forward` with k, under ZeRO-3). Rank 0 then checks each case, after every collective of every
    case (an assertion on rank 0 alone must not leave rank 1 waiting in one)."""
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world))
    xengine.select_accelerator(use_gpu=False)
    results = []
    for stage, bf16, accumulation, head_name in cases:
        torch.manual_seed(0)
        model, head = build_model(_cfg(head_name), META)
        sharded = model.head is None
        reference = (copy.deepcopy(model.backbone), _full_head(head, sharded))
        step = Step(model, head, _ds_config(stage, bf16, accumulation), lr=LR, head_lr=HEAD_LR, weight_decay=WD,
                    world=world, multiplier=MULTIPLIER, clip_head=CLIP)
        micro = ROWS // (world * accumulation)
        losses = []
        for n in range(STEPS):
            batch, total = _global_batch(n), torch.zeros((), dtype=torch.float64)
            for m in range(accumulation):
                lo = (m * world + rank) * micro
                total += step.step(_rows(batch, lo, lo + micro)).double()
            dist.all_reduce(total)
            losses.append(float(total) / (world * accumulation))
        live = None
        if not sharded:
            step.engine.save_checkpoint(str(Path(out) / _name(stage, bf16, accumulation, head_name)), tag="engine",
                                        save_latest=False)
            with torch.no_grad():
                scores, labels = step.engine.module(_global_batch(STEPS), k=5)
            with xengine.gathered(step.engine.module):
                weights = {key: value.detach().clone() for key, value in step.engine.module.state_dict().items()}
            live = {"weights": weights, "scores": scores.float(), "labels": labels}
        results.append((losses, reference, live))
    if rank != 0:
        return
    for case, (losses, (backbone, head), live) in zip(cases, results):
        stage, bf16, accumulation, head_name = case
        expected, norms = _reference(backbone, head, sharded=live is None)
        assert max(norms) > CLIP  # clipping takes part
        assert_close(torch.tensor(losses, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), atol=0,
                     rtol=BF16_RTOL if bf16 else FP32_RTOL, msg=_name(*case))
        if live is not None:
            _check_saved(Path(out) / _name(*case), live, head_name, bf16)


def _name(stage: int, bf16: bool, accumulation: int, head: str) -> str:
    return f"zero{stage}_{'bf16' if bf16 else 'fp32'}_acc{accumulation}_{head}"


def _check_saved(directory: Path, live: dict, head_name: str, bf16: bool) -> None:
    """Read back without an engine, the saved checkpoint's fp32 weights are the live ones (under bf16, the live
    bf16 weights are their rounding), score the probe batch as the engine did (fp32), and export unchanged."""
    weights = ckpt.module_state(directory)
    assert set(weights) == set(live["weights"])
    for key, value in weights.items():
        assert value.dtype == torch.float32, key
        assert torch.equal(value.to(live["weights"][key].dtype), live["weights"][key]), key
    model = build_model(_cfg(head_name), META)[0]
    model.load_state_dict(weights)
    with torch.no_grad():
        scores, labels = model(_global_batch(STEPS), k=5)
    if not bf16:
        assert_close(scores, live["scores"], atol=1e-6, rtol=1e-5)
        assert torch.equal(labels, live["labels"])
    exported = ckpt.module_state(ckpt.export_weights(directory, directory.parent / f"{directory.name}_export"))
    assert all(torch.equal(exported[key], value) for key, value in weights.items())


def test_zero3_with_accumulation_matches_one_process(spawn_gloo, tmp_path):
    """The representative case: parameters, gradients and optimiser state all partitioned, two micro-batches
    per step, a replicated head (run inside the engine's forward) and a sharded one (outside the engine)."""
    spawn_gloo(2, _train_and_compare, [(3, False, 2, "softmax"), (3, False, 2, "sharded_softmax")], str(tmp_path))


@pytest.mark.slow  # 2-6 min on 2 cores: 8 launches of 2 ranks, 2-4 DeepSpeed engines each
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_every_stage_and_precision_matches_one_process(spawn_gloo, tmp_path, stage, bf16):
    heads = ["softmax", "sharded_softmax"] if stage in (0, 3) else ["softmax"]
    spawn_gloo(2, _train_and_compare, [(stage, bf16, accumulation, head) for accumulation in (1, 2) for head in heads],
               str(tmp_path))


# ---- resume on another worker count (`xlc.train.persist`): DeepSpeed's universal checkpoint, head shards cut anew

RESUME_ROWS, RESUME_AT = 12, 2  # a global batch that 1, 2 and 3 ranks split evenly; optimiser steps before saving


class Case(NamedTuple):
    saved: int  # the ZeRO stage that saves
    resumed: int  # the ZeRO stage that resumes
    head: str
    bf16: bool = False

    def __str__(self) -> str:
        return f"zero{self.saved}_to_zero{self.resumed}_{self.head}_{'bf16' if self.bf16 else 'fp32'}"


def _train_steps(step: Step, rank: int, world: int, steps: range) -> list[float]:
    """Train on global batches `steps` of RESUME_ROWS rows, each rank on its slice; the loss of each step."""
    micro, losses = RESUME_ROWS // world, []
    for n in steps:
        loss = step.step(_rows(_global_batch(n, RESUME_ROWS), rank * micro, (rank + 1) * micro)).double()
        dist.all_reduce(loss)
        losses.append(float(loss) / world)
    return losses


def _build(case: Case, stage: int, world: int, directory: Path | None) -> tuple[Step, tuple]:
    """A `Step` of `case` at ZeRO `stage`, built as the worker builds it to resume from `directory` (None: a new
    run), and a copy of its initial backbone and (whole) head for the reference."""
    torch.manual_seed(0)
    model, head = build_model(_cfg(case.head), META)
    initial = (copy.deepcopy(model.backbone), _full_head(head, model.head is None))
    ds_config = _ds_config(stage, case.bf16, 1, micro_batch=RESUME_ROWS // world)
    ds_config = persist.engine_config(ds_config, directory, world)
    return Step(model, head, ds_config, lr=LR, head_lr=HEAD_LR, weight_decay=WD, world=world, multiplier=MULTIPLIER,
                clip_head=CLIP), initial


def _save(step: Step, directory: Path, rank: int, world: int, progress: Progress) -> None:
    persist.save(directory, step, rank, world, {**vars(progress), "metrics": {}}, head_inputs={})
    dist.barrier()  # every rank's files are there before anyone reads them


def _train_and_save(rank: int, world: int, cases: list[Case], out: str) -> None:
    """On 2 ranks: RESUME_AT steps of every case, then a checkpoint; rank 0 writes the steps' losses and the
    float64 reference's curve over all STEPS."""
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world))
    xengine.select_accelerator(use_gpu=False)
    for case in cases:
        step, (backbone, head) = _build(case, case.saved, world, None)
        losses = _train_steps(step, rank, world, range(RESUME_AT))
        _save(step, Path(out) / str(case) / "saved", rank, world, Progress(step=RESUME_AT, step_in_epoch=RESUME_AT))
        if rank == 0:
            expected, _ = _reference(backbone, head, sharded=step.sharded, rows=RESUME_ROWS)
            torch.save({"losses": losses, "expected": expected}, Path(out) / str(case) / "curve.pt")


def _resume_and_compare(rank: int, world: int, cases: list[Case], out: str) -> None:
    """On `world` ranks: resume every case from its checkpoint, save again at once, train the remaining steps.
    Rank 0 then checks, after every collective: the step count continued; the resumed fp32 weights and a sharded
    head's rows and Adam moments equal the saved ones exactly; the loss curve before and after the move follows
    the one-process reference (so the engine's moments and lr schedule moved too; in bf16 to BF16_RTOL); the
    checkpoint still verifies and its universal copy is gone."""
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world))
    xengine.select_accelerator(use_gpu=False)
    results = []
    for case in cases:
        root = Path(out) / str(case)
        step, _ = _build(case, case.resumed, world, root / "saved")
        progress = persist.restore(root / "saved", step, rank, world)
        counts = (progress.step, step.engine.global_steps)
        _save(step, root / f"resumed_on_{world}", rank, world, progress)
        results.append((counts, _train_steps(step, rank, world, range(RESUME_AT, STEPS))))
    if rank != 0:
        return
    for case, (counts, losses) in zip(cases, results):
        root = Path(out) / str(case)
        assert counts == (RESUME_AT, RESUME_AT), case
        saved, resumed = ckpt.module_state(root / "saved"), ckpt.module_state(root / f"resumed_on_{world}")
        assert set(saved) == set(resumed) and all(torch.equal(saved[k], resumed[k]) for k in saved), case
        if case.head == "sharded_softmax":
            assert _whole_head(root / "saved") == _whole_head(root / f"resumed_on_{world}"), case
        curve = torch.load(root / "curve.pt")
        assert_close(torch.tensor(curve["losses"] + losses, dtype=torch.float64),
                     torch.tensor(curve["expected"], dtype=torch.float64), atol=0,
                     rtol=BF16_RTOL if case.bf16 else FP32_RTOL, msg=str(case))
        assert ckpt.verify(root / "saved") == [] and not list(root.glob(".*")), case


def _whole_head(directory: Path) -> dict[str, list]:
    """A sharded head's tensors and Adam moments over all labels, from the shards in `directory` (as lists, so
    `==` compares every value exactly)."""
    shards = sorted((ckpt.load_file(p) for p in directory.glob("head_shard_*.pt")), key=lambda s: s["label_start"])
    whole = {name: torch.cat([s["tensors"][name] for s in shards]) for name in shards[0]["tensors"]}
    for name in shards[0]["moments"]:
        for key in ("exp_avg", "exp_avg_sq"):
            whole[f"{name}.{key}"] = torch.cat([s["moments"][name][key] for s in shards])
    return {name: tensor.tolist() for name, tensor in whole.items()}


# 30-130 s each on the shared 2-core machine (launches of 2, 3 and 1 ranks): even the 2 -> 3 launches of one stage
# alone took 20-56 s, past the default suite's budget, so no case runs there (tests/train/test_persist.py does)
@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_every_stage_resumes_on_3_and_on_1_rank(spawn_gloo, tmp_path, stage):
    """Each stage with a replicated head (in the engine) and a sharded one (its rows cut by label range), in fp32
    and in bf16 (DeepSpeed's bf16 optimiser at stage 1); at stages 1 and 2 also a move to the other one (they
    share a file layout)."""
    cases = [Case(stage, stage, "softmax"), Case(stage, stage, "sharded_softmax"), Case(stage, stage, "softmax", True)]
    cases += [Case(stage, 3 - stage, "softmax")] if stage < 3 else []
    spawn_gloo(2, _train_and_save, cases, str(tmp_path))
    for world in (3, 1):
        spawn_gloo(world, _resume_and_compare, cases, str(tmp_path))


def _resume_refused(rank: int, world: int, directory: str, marker: str) -> None:
    """Every rank raises the refusal of a doctored file (rank 0 meets it before converting and hands it on)."""
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world))
    xengine.select_accelerator(use_gpu=False)
    step, _ = _build(Case(1, 1, "softmax"), 1, world, Path(directory))
    with pytest.raises(DataError, match="refusing to load it: it holds pickled objects other than weights"):
        persist.restore(Path(directory), step, rank, world)
    assert not Path(marker).exists()


@pytest.mark.slow  # 30-90 s on the shared 2-core machine: launches of 2 and 3 ranks
def test_a_doctored_checkpoint_is_refused_before_conversion_on_every_rank(spawn_gloo, tmp_path):
    """DeepSpeed's converter unpickles unrestricted: a file holding code is refused before it runs."""
    case = Case(1, 1, "softmax")
    spawn_gloo(2, _train_and_save, [case], str(tmp_path))
    directory, marker = tmp_path / str(case) / "saved", tmp_path / "ran"
    optim_file = directory / "engine" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    doctored = torch.load(optim_file, weights_only=False)  # the test's own file
    doctored["client_state"] = Payload(str(marker))
    torch.save(doctored, optim_file)
    spawn_gloo(3, _resume_refused, str(directory), str(marker))
