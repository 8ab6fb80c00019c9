"""Muon on FSDP2-sharded hidden matrices: row shards get DistributedMuon, any other sharding is refused (no silent
wrong update: Newton-Schulz on a shard is not Newton-Schulz on the matrix).

Two real gloo ranks, the reference model wrapped by ``fully_shard`` after planning, as a user would do it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_RANK = """
import json, sys
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard

import widthwise as ww
from widthwise.models.llama import Llama, LlamaConfig
from widthwise.optim.build import is_sharded

rank, store = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
out = {}
for rows in (True, False):
    torch.manual_seed(0)
    model = Llama(LlamaConfig(width=64, heads=4, kv_heads=4, depth=1, vocab_size=300, max_seq_len=16))
    ww.add_multipliers(model, kind="row_col")
    plans = {name: ww.plan(model, recipe="robust", optimizer=name, forward_multipliers=False)
             for name in ("muon", "adamw")}
    assert not any(is_sharded(p) for p in model.parameters())
    placement = None if rows else (lambda p: Shard(p.ndim - 1))  # columns: not FSDP2's default
    for block in model.blocks:
        fully_shard(block, shard_placement_fn=placement)
    fully_shard(model)
    key = "rows" if rows else "columns"
    out[f"sharded_{key}"] = all(is_sharded(p) for p in model.parameters())
    try:
        built = ww.build_optimizer(model, plans["muon"], lr=1e-3, weight_decay=0.1, check_forward_multipliers=False)
        out[f"muon_{key}"] = type(built.optimizers["muon"]).__name__
    except ValueError as err:
        out[f"muon_{key}"] = str(err)
    adamw = ww.build_optimizer(model, plans["adamw"], lr=1e-3, weight_decay=0.1, check_forward_multipliers=False)
    out[f"adamw_groups_{key}"] = len(adamw.param_groups)
dist.destroy_process_group()
print(json.dumps(out))
"""


def test_muon_on_fsdp2_row_shards_is_distributed_other_shardings_are_refused(tmp_path):
    store = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(rank), str(store)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
             for rank in (0, 1)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    for out in results:
        assert out["sharded_rows"] is True and out["sharded_columns"] is True
        assert out["muon_rows"] == "DistributedMuon"
        assert out["muon_columns"].startswith("Muon cannot train 'blocks.0.attn.q_proj.weight': it is sharded with "
                                              "placements (Shard(dim=1),)")
        assert "Newton-Schulz on a shard is not Newton-Schulz on the matrix" in out["muon_columns"]
        assert out["adamw_groups_rows"] >= 3 and out["adamw_groups_columns"] >= 3

