"""Checkpoints: label-sharded heads reshard across world sizes; manifests catch truncation and corruption."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from xlc.heads import build_head
from xlc.train import checkpoint as ckpt

C, D = 23, 6  # 23 labels: uneven shards on 2 and 3 ranks


def _features() -> torch.Tensor:
    return torch.randn(5, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _train_and_save(rank: int, world: int, directory: str) -> None:
    torch.manual_seed(100 + rank)  # every rank initialises its shard differently
    head = build_head("sharded_softmax", C, D).double()
    opt = torch.optim.AdamW(head.parameters(), lr=0.1)
    x = _features()
    head.loss(x[rank::world], torch.arange(rank, 5, world) * 4).backward()
    opt.step()
    ckpt.save_head_shard(Path(directory), head, opt, rank)


def _load_and_score(rank: int, world: int, directory: str, out: str) -> None:
    head = build_head("sharded_softmax", C, D).double()
    opt = torch.optim.AdamW(head.parameters(), lr=0.1)
    ckpt.load_head_shard(directory, head, opt)
    x = _features()
    logits = x @ head.weight.T + head.bias  # [B, C_local]: this rank's columns of the full logits
    torch.save({"range": (head.label_start, head.label_end), "logits": logits.detach(), "weight": head.weight.detach(),
                "exp_avg": opt.state[head.weight]["exp_avg"]}, Path(out) / f"scored_{world}_{rank}.pt")
    ckpt.save_head_shard(Path(out) / f"w{world}", head, opt, rank)  # saved again from this world size


def _assemble(out: Path, world: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    parts = sorted((torch.load(out / f"scored_{world}_{r}.pt") for r in range(world)), key=lambda p: p["range"][0])
    return tuple(torch.cat([p[key] for p in parts], dim) for key, dim in (("logits", 1), ("weight", 0), ("exp_avg", 0)))


@pytest.mark.parametrize("chain", [(2, 3, 1)])
def test_reshard_round_trip_keeps_logits_and_moments(tmp_path, spawn_gloo, chain):
    first, second, third = chain
    saved = tmp_path / "w2"
    saved.mkdir()
    spawn_gloo(first, _train_and_save, str(saved))
    (tmp_path / f"w{second}").mkdir()
    spawn_gloo(second, _load_and_score, str(saved), str(tmp_path))  # 2 -> 3, and saves from 3
    logits_3, weight_3, moments_3 = _assemble(tmp_path, second)

    head = build_head("sharded_softmax", C, D).double()  # world size 1 without a process group
    opt = torch.optim.AdamW(head.parameters(), lr=0.1)
    ckpt.load_head_shard(tmp_path / f"w{second}", head, opt)  # 3 -> 1
    assert (head.label_start, head.label_end) == (0, C)
    logits_1 = _features() @ head.weight.T + head.bias
    torch.testing.assert_close(weight_3, head.weight.detach(), rtol=0, atol=0)  # bit-identical rows
    torch.testing.assert_close(logits_3, logits_1, rtol=0, atol=1e-12)  # matmul blocking differs per shard
    torch.testing.assert_close(moments_3, opt.state[head.weight]["exp_avg"], rtol=0, atol=0)
    assert moments_3.abs().sum() > 0  # the step really left Adam moments to carry over


def test_manifest_detects_truncation_and_falls_back(tmp_path):
    old, new = tmp_path / "checkpoint_000001", tmp_path / "checkpoint_000002"
    for directory in (old, new):
        directory.mkdir()
        payload = directory / "weights.pt"
        torch.save({"w": torch.arange(1000.0)}, payload)
        ckpt.write_manifest(directory, 0, [payload, ckpt.write_state(directory, {"epoch": 1})])
    assert ckpt.verify(new) == [] and ckpt.latest_valid(new) == new

    data = (new / "weights.pt").read_bytes()
    (new / "weights.pt").write_bytes(data[: len(data) // 2])  # a worker killed mid-write
    problems = ckpt.verify(new)
    assert len(problems) == 1 and "truncated" in problems[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ckpt.latest_valid(new) == old
    assert any("corrupt" in str(w.message) for w in caught)

    state = old / "state.json"
    state.write_text(state.read_text().replace("1", "2"))  # same size, altered content
    assert any("checksum mismatch" in p for p in ckpt.verify(old))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ckpt.latest_valid(new) is None
    assert "no manifest" in ckpt.verify(tmp_path)[0]


def test_exported_weights_drop_optimiser_state_and_load_like_the_checkpoint(tmp_path):
    """`export_weights`: fp32 module weights, shards with their label ranges and no moments, a manifest."""
    src = tmp_path / "ckpt"
    (src / "engine").mkdir(parents=True)
    module = {"backbone.embed.weight": torch.randn(7, D).bfloat16(), "backbone.steps": torch.tensor(3)}
    torch.save({"module": module, "optimizer": {"huge": torch.zeros(100)}}, src / ckpt.ENGINE_MODULE_FILE)
    head = build_head("sharded_softmax", C, D)
    opt = torch.optim.AdamW(head.parameters(), lr=0.1)
    head.loss(_features().float(), torch.arange(5)).backward()
    opt.step()
    ckpt.save_head_shard(src, head, opt, 0)
    ckpt.write_state(src, {"step": 1})

    out = ckpt.export_weights(src, tmp_path / "model")
    assert ckpt.verify(out) == []
    weights = ckpt.module_state(out)
    assert weights["backbone.embed.weight"].dtype == torch.float32
    assert torch.equal(weights["backbone.embed.weight"], module["backbone.embed.weight"].float())
    assert torch.equal(weights["backbone.steps"], module["backbone.steps"])
    shard = torch.load(out / "head_shard_0.pt", weights_only=True)
    assert shard["moments"] == {} and (shard["label_start"], shard["label_end"]) == (0, C)
    reloaded = build_head("sharded_softmax", C, D)
    ckpt.load_head_shard(out, reloaded)
    assert torch.equal(reloaded.weight, head.weight.detach())
    assert ckpt.read_state(out) == {"step": 1, "manifests": 1}  # one manifest, whatever the world size was
