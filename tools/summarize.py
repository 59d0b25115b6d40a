"""Tables and a picture over finished runs: every results.json under a folder, grouped by (scenario, order, method),
mean +/- std over seeds. Run as `python tools/summarize.py` (or `python -m tools.summarize`).

    python tools/summarize.py runs/                  # markdown tables, and runs/summary.png
    python tools/summarize.py runs/ --png out.png
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.files import UserError  # noqa: E402

SUMMARY_KEYS = ["last", "maa", "mft", "bwt", "forgetting", "brg", "brg_mean", "text_retention", "router_accuracy"]


def _groups(root):
    """{(scenario, order, method): [results.json dicts]} over every results.json under root."""
    groups = {}
    for p in sorted(glob.glob(os.path.join(root, "**", "results.json"), recursive=True)):
        with open(p) as f:
            r = json.load(f)
        groups.setdefault((r["args"]["scenario"], r["args"]["order"], r["method"]), []).append(r)
    if not groups:
        raise UserError(f"{root}: no results.json found")
    # str(order): a --tasks run's order is its task sequence (text), a scenario's a number
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2])))


def summarize(root, png=None):
    """Markdown tables (one per scenario) over every results.json under root: mean +/- std over seeds.
    With `png`, also draw them (draw_summary)."""
    groups = _groups(root)
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


def main(argv=None):
    p = argparse.ArgumentParser(prog="python tools/summarize.py", description="tables (and a picture) over runs")
    p.add_argument("root", nargs="?", default="runs")
    p.add_argument("--png", default=None, help="where the picture goes (default <root>/summary.png)")
    a = p.parse_args(argv)
    try:
        print(summarize(a.root, png=a.png or os.path.join(a.root, "summary.png")))
    except UserError as e:
        sys.exit(str(e.code))


if __name__ == "__main__":
    main()
