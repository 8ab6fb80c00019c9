"""The shipped offline lm-eval tasks, built from held-out text of the bundled Shakespeare corpus.

lm-eval's standard tasks download their data from a hub; these are lm-eval task YAMLs over local jsonl
(``dataset_path: json``), generated deterministically into the data cache from the plays that the default data
split holds out for validation (``data.val_fraction: 0.05``, ``data.split_seed: 0``), so a run trained on the
default data never saw them:

- ``shakespeare_cloze`` (LAMBADA-style): a speech with the two speeches before it, cut before the speech's last
  word; the model is scored on that word (``perplexity`` of the word, the headline: small models rarely get
  ``acc``, greedy decoding giving the whole word).
- ``shakespeare_next_line`` (HellaSwag-style): a speech up to a line break; the true next line against three
  lines of similar length from elsewhere in the held-out plays. ``acc`` and ``acc_norm`` (per-byte likelihood)
  as in HellaSwag, and the headline ``acc_mutual_info`` (``log P(line | context) - log P(line)``): in small models
  how likely a line is on its own swamps what the context says (measured: a tiny model that uses its context
  scores 0.34 there against an untrained one's 0.24, while both sit near chance in ``acc_norm``).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write_text
from .data import load_documents, split_documents
from .data.corpus import corpus_fingerprint

__all__ = ["TASKS", "build_tasks", "cloze_items", "next_line_items", "speeches"]

#: Bump when the items change: the cache folder is keyed by it.
TASK_VERSION = 4
#: The default data split (``data.val_fraction``, ``data.split_seed``) whose validation plays the tasks use.
HELD_OUT = (0.05, 0)
MAX_ITEMS = 500
#: Lines the next-line task uses, in characters: long enough to carry signal, short enough (at most about 30 tokens of
#: a 512-token BPE) to fit a short-context model's window.
LINE_CHARS = (16, 40)
_SPEAKER = re.compile(r"^[A-Z][A-Z' .,-]*[A-Z.]$")
_LAST_WORD = re.compile(r"^(.*\S) ([A-Za-z][A-Za-z']*[A-Za-z])[.,;:!?'\"-]*$", re.DOTALL)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    metrics: tuple[str, ...]  # the first is the task's headline metric
    yaml: str


TASKS = {
    "shakespeare_cloze": TaskSpec(
        "shakespeare_cloze", "LAMBADA-style: the last word of a held-out speech, given it and the two before",
        ("perplexity", "acc"),
        "output_type: loglikelihood\ndoc_to_text: context\ndoc_to_target: target\n"
        "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: perplexity, aggregation: perplexity, higher_is_better: false}\n",
    ),
    "shakespeare_next_line": TaskSpec(
        "shakespeare_next_line", "HellaSwag-style: the true next line of a held-out speech among 4 of similar length",
        ("acc_mutual_info", "acc_norm", "acc"),
        "output_type: multiple_choice\ndoc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: label\n"
        "target_delimiter: \"\\n\"\n"
        "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_mutual_info, aggregation: mean, higher_is_better: true}\n",
    ),
}


def speeches(text: str) -> list[tuple[str, list[str]]]:
    """``(speaker, lines)`` of every speech in a play: a block of an upper-case name line and the lines after it."""
    result = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.strip().split("\n")]
        if len(lines) >= 2 and _SPEAKER.match(lines[0]):
            body = [line for line in lines[1:] if line and not line.startswith("[")]
            if body:
                result.append((lines[0], body))
    return result


def _render(speech: tuple[str, list[str]]) -> str:
    return speech[0] + "\n" + "\n".join(speech[1])


def cloze_items(plays: list[str], limit: int = MAX_ITEMS, seed: int = 0) -> list[dict[str, str]]:
    """LAMBADA-style items ``{context, target}`` (target: space + word), every one from a speech of 12+ words."""
    items = []
    for play in plays:
        sp = speeches(play)
        for i in range(2, len(sp)):
            body = "\n".join(sp[i][1])
            m = _LAST_WORD.match(body)
            if m is None or len(body.split()) < 12:
                continue
            before = "\n\n".join(_render(s) for s in sp[i - 2 : i])
            items.append({"context": f"{before}\n\n{sp[i][0]}\n{m.group(1)}", "target": " " + m.group(2)})
    return _sample(items, limit, seed)


def next_line_items(plays: list[str], limit: int = MAX_ITEMS, seed: int = 0) -> list[dict]:
    """HellaSwag-style items ``{context, choices, label}``: a speech cut at a line break, the true next line
    shuffled among three lines of similar length (within 25%, all within ``LINE_CHARS``) from other speeches."""
    cuts, pool = [], []
    for p, play in enumerate(plays):
        sp = speeches(play)
        for i, (_, lines) in enumerate(sp):
            pool.extend((p, i, line) for line in lines if LINE_CHARS[0] <= len(line) <= LINE_CHARS[1])
            if i >= 1 and len(lines) >= 3:
                for j in range(2, len(lines)):
                    if LINE_CHARS[0] <= len(lines[j]) <= LINE_CHARS[1]:
                        context = f"{_render(sp[i - 1])}\n\n{sp[i][0]}\n" + "\n".join(lines[:j])
                        cuts.append((p, i, context, lines[j]))
    rng = random.Random(seed)
    pool.sort(key=lambda e: len(e[2]))
    lengths = [len(e[2]) for e in pool]
    items = []
    for p, i, context, gold in _sample(cuts, limit, seed):
        lo = bisect.bisect_left(lengths, len(gold) * 0.75)
        hi = bisect.bisect_left(lengths, len(gold) * 1.25 + 1)
        candidates = sorted({e[2] for e in pool[lo:hi] if (e[0], e[1]) != (p, i) and e[2] != gold})
        if len(candidates) < 3:
            continue
        choices = [gold, *rng.sample(candidates, 3)]
        rng.shuffle(choices)
        items.append({"context": context, "choices": choices, "label": choices.index(gold)})
    return items


def _sample(items: list, limit: int, seed: int) -> list:
    """``limit`` items spread over all of them, in order (deterministic)."""
    if len(items) <= limit:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[k] for k in keep]


def held_out_plays() -> tuple[list[str], str]:
    """The texts of the bundled plays the default split holds out, and a fingerprint of the corpus."""
    documents = load_documents(None)
    _, val = split_documents(documents, *HELD_OUT)
    return [d.text for d in val], corpus_fingerprint(documents)


def build_tasks(cache_dir: Path) -> Path:
    """The folder of the shipped task YAMLs and their jsonl (built once per corpus and task version)."""
    plays, fingerprint = held_out_plays()
    key = hashlib.sha256(f"{TASK_VERSION}:{fingerprint}".encode()).hexdigest()[:16]
    folder = Path(cache_dir) / f"eval-tasks-{key}"
    if (folder / "done").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    makers = {"shakespeare_cloze": cloze_items, "shakespeare_next_line": next_line_items}
    for name, spec in TASKS.items():
        data = folder / f"{name}.jsonl"
        atomic_write_text(data, "".join(json.dumps(item) + "\n" for item in makers[name](plays)))
        header = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                  f"    test: {json.dumps(str(data))}\ntest_split: test\n")
        atomic_write_text(folder / f"{name}.yaml", header + spec.yaml + f"metadata: {{version: {TASK_VERSION}}}\n")
    atomic_write_text(folder / "done", "")
    return folder
