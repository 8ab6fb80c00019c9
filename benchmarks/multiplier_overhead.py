"""Training-step time with ``row_col`` learnable multipliers on every matrix vs none, side by side.

Same HF ``LlamaForCausalLM``, same batch, same AdamW plan, one process; the two variants alternate
step by step (ABBA) and each figure is a median over many steps, with the median and quartiles of the
ratios of adjacent steps. Prints JSON with the ratio and the load average. (`widthwise bench` measures
the same on widthwise's own reference model; this script shows it on a third-party HF model.)

    python benchmarks/multiplier_overhead.py --width 256 --depth 4 --batch 16 --seq 256
    python benchmarks/multiplier_overhead.py --compile            # add --bf16 where bf16 matmul is native
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import widthwise as ww
from widthwise.app.bench.timing import interleaved, load_average, median_s, ratio


def build(width: int, depth: int, vocab: int, multipliers: bool, seed: int = 0, placement="all"):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=depth,
                      num_attention_heads=max(1, width // 64), num_key_value_heads=max(1, width // 64),
                      max_position_embeddings=4096)
    model = LlamaForCausalLM(cfg)
    if multipliers:
        ww.add_multipliers(model, kind="row_col", placement=placement)
    with torch.device("meta"):
        base = LlamaForCausalLM(LlamaConfig(**{**cfg.to_dict(), "hidden_size": 64, "intermediate_size": 256,
                                               "num_attention_heads": 1, "num_key_value_heads": 1}))
    if multipliers:
        ww.add_multipliers(base)
    plan = ww.plan(model, base=base, recipe="robust")
    ww.init_weights(model, plan, generator=torch.Generator().manual_seed(seed))
    opt = ww.build_optimizer(model, plan, lr=1e-3, weight_decay=0.1)
    return model, opt


def make_step(model, opt, use_compile: bool, bf16: bool):
    forward = torch.compile(model) if use_compile else model
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext

    def step(x):
        with autocast():
            loss = forward(input_ids=x, labels=x).loss
        loss.backward()
        ww.clip_grad_norm_(model, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def cycling(step, batches):
    """A no-argument call of ``step`` on the next of ``batches``, round and round."""
    count = [0]

    def call():
        count[0] += 1
        return step(batches[count[0] % len(batches)])

    return call


def measure(args) -> dict:
    variants = {}
    for name, mult in (("none", False), ("row_col", True)):
        placement = [r"layers\."] if args.skip_embedding else "all"
        model, opt = build(args.width, args.depth, args.vocab, mult, placement=placement)
        variants[name] = make_step(model, opt, args.compile, args.bf16)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq), generator=g) for _ in range(4)]
    step = {name: cycling(fn, batches) for name, fn in variants.items()}
    load_before = load_average()
    times = interleaved(step, args.steps, warmup=args.warmup)  # ABBA turns: load drifts hit both alike
    overhead = ratio(times["row_col"], times["none"])
    return {
        "width": args.width, "depth": args.depth, "batch": args.batch, "seq": args.seq,
        "compile": args.compile, "bf16": args.bf16, "threads": torch.get_num_threads(),
        "placement": "blocks only" if args.skip_embedding else "all",
        "steps_per_variant": overhead["reps"],
        "step_s_none": median_s(times["none"]), "step_s_row_col": median_s(times["row_col"]),
        "multiplier_train_overhead": overhead["ratio"],
        "pair_ratio_median": overhead["pair_median"],
        "pair_ratio_p25": overhead["pair_p25"], "pair_ratio_p75": overhead["pair_p75"],
        "tokens_per_s_none": args.batch * args.seq / median_s(times["none"]),
        "loadavg_before": load_before, "loadavg_after": load_average(),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=40, help="timed steps per variant (interleaved)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--skip-embedding", action="store_true", help="multipliers on block matrices only")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    result = measure(parse_args(argv))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
