"""Tables and a picture over finished runs: every results.json under a folder, grouped by (scenario, order, method),
mean +/- std over seeds (`python tools/summarize.py`, or `python -m tools.summarize`). And what the model said: a
run's predictions/ side by side with other runs', one test sample at a time (the qualitative tables of results.md).

    python tools/summarize.py runs/                  # markdown tables, and runs/summary.png
    python tools/summarize.py runs/ --png out.png
    python tools/summarize.py --flat docs/runs/      # only runs directly under the folder, not in its sub-folders
    python tools/summarize.py --compare runs/finetune__micl__order1__seed0 runs/moincl__micl__order1__seed0 \
        --sample audio-cap/test/3                    # its answers after every step, per run (default: results.md's)
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.files import UserError  # noqa: E402
from data.predictions import pick_samples, read_predictions, sample_table  # noqa: E402

SUMMARY_KEYS = ["last", "maa", "mft", "bwt", "forgetting", "brg", "brg_mean", "text_retention", "router_accuracy"]


def _title(args):
    """A run's table: the scenario, with the models when not the embedded default (the LLM / encoders or the LLaVA
    checkpoint) and the split when not the test split, so runs on other weights or data never share a table."""
    names = [args[k] for k in ("mllm", "llm", "image_encoder", "audio_encoder") if args.get(k) not in (None, "tiny")]
    val = args.get("val")                                   # True in older runs; "iid" / "style" / "phrasing"
    split = ("val" if val in (True, "iid") else f"val {val}") if val else args.get("test_split", "test")
    return (args["scenario"] + (" (" + ", ".join(os.path.basename(str(n).rstrip("/")) for n in names) + ")") * bool(names)
            + f", {split} split" * (split != "test"))


def _groups(root, flat=False):
    """{(scenario [+ models], order, method): [results.json dicts]} over every results.json under root (flat: only
    root/<run>/results.json, so runs kept in sub-folders, e.g. another machine's, stay out of the tables)."""
    groups = {}
    for p in sorted(glob.glob(os.path.join(root, "*" if flat else "**", "results.json"), recursive=not flat)):
        with open(p) as f:
            r = json.load(f)
        groups.setdefault((_title(r["args"]), r["args"]["order"], r["method"]), []).append(r)
    if not groups:
        raise UserError(f"{root}: no results.json found")
    # str(order): a --tasks run's order is its task sequence (text), a scenario's a number
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2])))


def summarize(root, png=None, flat=False):
    """Markdown tables (one per scenario and models) over every results.json under root (flat: _groups), mean +/- std
    over seeds. With `png`, also draw them (draw_summary)."""
    groups = _groups(root, flat)
    out = []
    for scen in sorted({k[0] for k in groups}):
        keys = [k for k in SUMMARY_KEYS if any(k in r["metrics"] for g, rs in groups.items() if g[0] == scen for r in rs)]
        head = ["method", "order", "seeds", *keys, "BRG after steps 2..T", "minutes"]
        out += [f"\n#### {scen}\n", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for (s, order, method), rs in groups.items():
            if s != scen:
                continue
            cells = []
            for k in keys:
                v = [r["metrics"][k] for r in rs if k in r["metrics"]]
                cells.append(f"{np.mean(v):.1f} ± {np.std(v):.1f}" if v else "-")
            steps = [r["brg_steps"] for r in rs if r.get("brg_steps")]            # BRG_i, mean over seeds per step
            cells.append(" / ".join(f"{x:.1f}" for x in np.mean(steps, 0)) if len(steps) == len(rs) else "-")
            seeds = ",".join(str(r["args"]["seed"]) for r in rs)
            minutes = np.mean([r["timings"]["total_s"] for r in rs]) / 60     # train + eval, model build excluded
            out.append(f"| {method} | {order} | {seeds} | " + " | ".join(cells) + f" | {minutes:.1f} |")
    if png:
        draw_summary(groups, png)
    return "\n".join(out)


def draw_summary(groups, path):
    """One row per (scenario, order, method): BWT bar to the left of 0, Last bar to the right, each the mean over
    seeds with a min-max whisker, so the methods of a scenario can be compared at a glance."""
    from PIL import Image, ImageDraw, ImageFont
    rows, prev = [], None                      # ("head", text) or ("bar", method, [runs])
    for (scen, order, method), rs in groups.items():
        if (scen, order) != prev:
            rows.append(("head", f"{scen}  order {order}"))
            prev = (scen, order)
        rows.append(("bar", method, rs))
    left, half, h, top = 190, 220, 16, 44      # label column, pixels per 100 points, row height, header
    zero = left + half
    px = lambda s: zero + max(-100.0, min(100.0, s)) * half / 100
    img = Image.new("RGB", (left + 2 * half + 60, top + h * len(rows) + 30), "white")
    d, font = ImageDraw.Draw(img), ImageFont.load_default()
    d.text((10, 8), "mean over seeds, whisker = min-max     red: BWT (left of 0)     blue: Last (right of 0)",
           fill="black", font=font)
    for v in range(-100, 101, 25):             # grid and axis labels every 25 points
        x = zero + v * half // 100
        d.line([x, top - 6, x, top + h * len(rows)], fill="black" if v == 0 else (225, 225, 225))
        d.text((x - 10, top + h * len(rows) + 6), str(v), fill="black", font=font)
    for i, row in enumerate(rows):
        y = top + i * h
        if row[0] == "head":
            d.text((10, y + 2), row[1], fill="black", font=font)
            continue
        _, method, rs = row
        d.text((22, y + 2), f"{method} ({len(rs)})", fill="black", font=font)
        for key, colour in (("bwt", (205, 70, 60)), ("last", (55, 110, 190))):
            v = [r["metrics"][key] for r in rs if r["metrics"].get(key) is not None]
            if not v:
                continue
            m = float(np.mean(v))
            d.rectangle([min(zero, px(m)), y + 3, max(zero, px(m)), y + h - 3], fill=colour)
            d.line([px(min(v)), y + h // 2, px(max(v)), y + h // 2], fill="black")
            for s in (min(v), max(v)):
                d.line([px(s), y + 4, px(s), y + h - 4], fill="black")
            d.text((px(max(v)) + 4 if key == "last" else px(min(v)) - 34, y + 2), f"{m:.1f}", fill="black", font=font)
    tmp = path + ".tmp.png"
    img.save(tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- predictions
def find_sample(refs, sample, run_dir):
    """The (task, id) that --sample names: a sample id, or <task>/<id> where several tasks have that id."""
    hits = [k for k in refs if sample in (k[1], f"{k[0]}/{k[1]}")]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise UserError(f"--sample {sample}: {len(hits)} tasks of {run_dir} have it; name one as <task>/<id>: "
                        + ", ".join(f"{t}/{i}" for t, i in hits))
    first = {}
    for t, i in refs:
        first.setdefault(t, i)
    raise UserError(f"--sample {sample}: no such test sample in {run_dir} (the first id of each task: "
                    f"{', '.join(first.values())})")


def compare(run_dirs, sample=None):
    """Markdown tables: what every run said after every step on `sample` (default: results.md's seeded pick of the
    first run) side by side. The runs must hold that sample with the same instruction and target (same data)."""
    runs = []
    for d in run_dirs:
        res = {}
        if os.path.isfile(os.path.join(d, "results.json")):
            with open(os.path.join(d, "results.json")) as f:
                res = json.load(f)
        runs.append((res.get("method") or os.path.basename(os.path.normpath(d)), *read_predictions(d), res))
    if len({name for name, *_ in runs}) < len(runs):                # e.g. two seeds of one method: their folders
        runs = [(os.path.basename(os.path.normpath(d)), *r[1:]) for d, r in zip(run_dirs, runs)]
    if sample is not None:
        keys = [find_sample(runs[0][1], sample, run_dirs[0])]
    elif "args" in runs[0][3]:
        keys = pick_samples(runs[0][1], runs[0][3]["args"]["seed"])
    else:
        raise UserError(f"{run_dirs[0]}: no results.json (an unfinished run) to take the seed from; name a sample "
                        f"with --sample")
    for key in keys:
        for d, (_, refs, _, _) in zip(run_dirs[1:], runs[1:]):
            a, b = runs[0][1][key], refs.get(key)
            if b is None:
                raise UserError(f"{d}: has no test sample {key[1]} ({key[0]}), which {run_dirs[0]} has")
            if (a["instruction"], a["target"]) != (b["instruction"], b["target"]):
                raise UserError(f"{d}: its test sample {key[1]} ({key[0]}) is not the one of {run_dirs[0]} "
                                f"(another seed or data)")
    return "\n".join(sample_table([r[:3] for r in runs], key) for key in keys)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python tools/summarize.py", description="tables (and a picture) over runs; "
                                "with --compare, what runs said on test samples")
    p.add_argument("root", nargs="?", default="runs")
    p.add_argument("--png", default=None, help="where the picture goes (default <root>/summary.png)")
    p.add_argument("--flat", action="store_true", help="only the runs directly under root (root/RUN/results.json)")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="run folders: their answers after every step, side by "
                   "side, on the test samples of results.md (or --sample)")
    p.add_argument("--sample", default=None, help="with --compare: a test sample id (or <task>/<id>)")
    a = p.parse_args(argv)
    try:
        if a.compare:
            print(compare(a.compare, a.sample))
        elif a.sample is not None:
            raise UserError("--sample goes with --compare RUN [RUN ...]")
        else:
            print(summarize(a.root, png=a.png or os.path.join(a.root, "summary.png"), flat=a.flat))
    except UserError as e:
        sys.exit(str(e.code))


if __name__ == "__main__":
    main()
