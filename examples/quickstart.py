"""widthwise in your own training loop: HF's LlamaForCausalLM built offline, trained a few steps, exported plain.

Run it from any directory (it writes ``./exported``):

    python examples/quickstart.py

tests/test_readme.py runs this file; the README shows all of it but the export check.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import widthwise as ww


def build(width: int) -> LlamaForCausalLM:  # any nn.Module works; this one is HF's, built offline
    return LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=width, intermediate_size=4 * width,
                                        num_hidden_layers=2, num_attention_heads=width // 64,
                                        num_key_value_heads=width // 64))


model = build(512)
ww.add_multipliers(model, kind="row_col", placement="all")     # W = diag(r) V diag(c), head excluded
with torch.device("meta"):
    base = build(128)                                          # the width the base lr/wd were tuned at
plan = ww.plan(model, base=base, recipe="robust", optimizer="adamw")  # roles, width multipliers, lr/wd factors
ww.init_weights(model, plan)                                   # muP init + the head's fixed 1/m multiplier
opt = ww.build_optimizer(model, plan, lr=3e-3, weight_decay=0.1)     # base values, meaningful at the base width
sched = ww.lr_schedule(opt, warmup=10, total=100, kind="cosine")     # relative: per-group ratios survive
print(plan.table(lr=3e-3, weight_decay=0.1))

x = torch.randint(0, 1024, (4, 64))
groups = ww.clip_groups(model)                                 # the multipliers apart, found once, not every step
for _step in range(3):
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    ww.clip_grad_norm_(model, 1.0, groups=groups)              # the multipliers stay out of the norm
    opt.step()
    sched.step()
    opt.zero_grad()

model.eval()
with torch.no_grad():
    before = model(x).logits
ww.fold_multipliers(model)                                     # a plain LlamaForCausalLM again
model.save_pretrained("exported")
reloaded = LlamaForCausalLM.from_pretrained("exported").eval()
with torch.no_grad():
    torch.testing.assert_close(reloaded(x).logits, before, rtol=1e-5, atol=1e-5)
print("exported/ reloads as a plain LlamaForCausalLM with the same logits")
