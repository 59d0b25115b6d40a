"""A run's predictions/, read back: every evaluation's answers (written by common.Run), the seeded pick of test
samples and the markdown table of what the model said after each step (results.md's qualitative section,
`python tools/summarize.py --compare`). Reads files only; imports nothing of common.py."""
import glob
import json
import os
import random

from data.files import UserError


def read_predictions(run_dir):
    """A run's predictions/ (written by common.Run): its test samples {(task, id): reference line} in test order, and
    its evaluations [(step index, step name, {(task, id): prediction line})] in step order, zero-shot (0) first."""
    d = os.path.join(run_dir, "predictions")
    if not os.path.isfile(os.path.join(d, "references.jsonl")):
        raise UserError(f"{run_dir}: no predictions/references.jsonl (not a run folder, a run that has not finished "
                        f"a task, or one made before runs kept their predictions)")

    def lines(name):
        with open(os.path.join(d, name)) as f:
            return {(x["task"], x["id"]): x for x in map(json.loads, f)}
    steps = []
    for path in glob.glob(os.path.join(d, "step*_*.jsonl")):
        i, name = os.path.basename(path)[4:-len(".jsonl")].split("_", 1)
        steps.append((int(i), name, lines(os.path.basename(path))))
    return lines("references.jsonl"), sorted(steps, key=lambda s: s[0])


def pick_samples(refs, seed, per_task=1):
    """`per_task` test samples of every task and of the text-only set, drawn by the run's seed alone (never by score):
    every run on that seed and data shows the same ones."""
    ids = {}
    for task, i in refs:
        ids.setdefault(task, []).append(i)
    return [(task, i) for task, xs in ids.items() for i in random.Random(f"{seed}:{task}").sample(xs, min(per_task, len(xs)))]


def _cell(text, limit=200):
    text = " ".join(str(text).split())                  # one table row: newlines and runs of spaces as one space
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return text.replace("|", "\\|") or "(nothing)"


def sample_table(runs, key):
    """Markdown: sample `key` = (task, id) (what it asks, its target) and what each run [(name, refs, steps)] answered
    after every step, with the sample's score. Runs whose steps differ (joint's one step) share rows by step index."""
    ref = runs[0][1][key]
    more = f" (+{len(ref['references']) - 1} more references)" if len(ref.get("references") or []) > 1 else ""
    head = ["answer (score)"] if len(runs) == 1 else [name for name, _, _ in runs]
    out = [f"**{key[1]}** ({key[0]}, {ref['rule']}), instruction \"{_cell(ref['instruction'])}\", target "
           f"\"{_cell(ref['target'])}\"{more}",
           "", "| after | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for k in sorted({i for _, _, steps in runs for i, _, _ in steps}):
        names = list(dict.fromkeys(name for _, _, steps in runs for i, name, _ in steps if i == k))
        cells = []
        for _, _, steps in runs:
            x = next((p[key] for i, _, p in steps if i == k and key in p), None)
            cells.append("-" if x is None else f"{_cell(x['pred'])} ({x['score']:.0f})")
        out.append(f"| {'zero-shot' if k == 0 else f'{k}. ' + ' / '.join(names)} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def qualitative(run_dir, seed):
    """results.md's section on what the model said (as MoInCL's Figures 3-5): one test sample per task, drawn by
    the seed. Empty for a run without predictions/."""
    if not os.path.isdir(os.path.join(run_dir, "predictions")):
        return ""
    refs, steps = read_predictions(run_dir)
    return ("\n### What the model said\n\nOne test sample per task, drawn by the seed (not by score): the answer "
            "after every step and its score (0-100). Every answer is in predictions/.\n\n" +
            "\n".join(sample_table([("", refs, steps)], key) for key in pick_samples(refs, seed)))
