"""`python tools/summarize.py`: the markdown table and the summary picture, on hand-written results.json files."""
import json

import pytest
from PIL import Image

from tools.summarize import main as summarize      # what `python tools/summarize.py` runs (as a process: test_run.py)


def fake_run(root, method, scenario, order, seed, metrics, total_s=120.0, brg_steps=None, **args):
    d = root / f"{method}__{scenario}__order{order}__seed{seed}{'-' + '-'.join(map(str, args.values())) if args else ''}"
    d.mkdir(parents=True)
    res = {"method": method, "args": {"scenario": scenario, "order": order, "seed": seed, **args}, "metrics": metrics,
           "timings": {"total_s": total_s}, "brg_steps": brg_steps}
    (d / "results.json").write_text(json.dumps(res))


def test_summarize_table_and_png(tmp_path, capsys):
    fake_run(tmp_path, "finetune", "micl", 1, 0, {"last": 40.0, "bwt": -50.0, "text_retention": 30.0})
    fake_run(tmp_path, "finetune", "micl", 1, 1, {"last": 50.0, "bwt": -40.0, "text_retention": 20.0}, 180.0)
    fake_run(tmp_path, "joint", "micl", 1, 0, {"last": 90.0, "text_retention": 35.0})
    fake_run(tmp_path, "mera", "mcl", 2, 0, {"last": 60.0, "bwt": -2.0, "brg": 97.0}, brg_steps=[99.0, 97.0])
    fake_run(tmp_path, "mera", "mcl", 2, 1, {"last": 60.0, "bwt": -2.0, "brg": 97.0}, brg_steps=[96.0, 97.0])
    fake_run(tmp_path, "finetune", "micl", 1, 0, {"last": 7.0}, llm="cache/real/smollm2/", image_encoder="tiny")
    fake_run(tmp_path, "finetune", "micl", 1, 0, {"last": 3.0}, val=True)
    fake_run(tmp_path, "finetune", "micl", 1, 1, {"last": 5.0}, val="style")
    png = tmp_path / "pic" / "s.png"
    png.parent.mkdir()
    summarize([str(tmp_path), "--png", str(png)])
    out = capsys.readouterr().out
    assert "#### micl" in out and "#### mcl" in out
    assert "| finetune | 1 | 0,1 | 45.0 ± 5.0 | -45.0 ± 5.0 | 25.0 ± 5.0 | - | 2.5 |" in out
    assert "| joint | 1 | 0 | 90.0 ± 0.0 | - | 35.0 ± 0.0 | - | 2.0 |" in out
    assert "#### micl (smollm2)" in out and "| finetune | 1 | 0 | 7.0 ± 0.0 | - | 2.0 |" in out   # other weights: own table
    assert "#### micl, val split" in out and "| finetune | 1 | 0 | 3.0 ± 0.0 | - | 2.0 |" in out
    assert "#### micl, val style split" in out and "| finetune | 1 | 1 | 5.0 ± 0.0 | - | 2.0 |" in out
    assert "| mera | 2 | 0,1 | 60.0 ± 0.0 | -2.0 ± 0.0 | 97.0 ± 0.0 | 97.5 / 97.0 | 2.0 |" in out   # BRG per step
    w, h = Image.open(png).size
    assert 500 <= w <= 1200 and 100 <= h <= 900      # five headers + six method rows


def test_flat_leaves_out_runs_in_sub_folders(tmp_path, capsys):
    """--flat: only root/<run>/results.json (docs/runs keeps another machine's runs in a sub-folder)."""
    fake_run(tmp_path, "finetune", "dcl", 1, 0, {"last": 36.0})
    fake_run(tmp_path / "other-cpu", "finetune", "dcl", 1, 0, {"last": 30.0})
    summarize([str(tmp_path), "--flat", "--png", str(tmp_path / "s.png")])
    assert "| finetune | 1 | 0 | 36.0 ± 0.0 | - | 2.0 |" in capsys.readouterr().out
    summarize([str(tmp_path), "--png", str(tmp_path / "s.png")])
    assert "| finetune | 1 | 0,0 | 33.0 ± 3.0 | - | 2.0 |" in capsys.readouterr().out


def test_summarize_default_png_and_empty_root(tmp_path):
    fake_run(tmp_path, "finetune", "dcl", 1, 0, {"last": 36.0, "bwt": -72.0, "router_accuracy": 99.0})
    summarize([str(tmp_path)])
    assert Image.open(tmp_path / "summary.png").size[0] > 500
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        summarize([str(empty)])
    assert str(e.value.code) == f"error: {empty}: no results.json found"


# ---------------------------------------------------------------------------------------------- --compare
def fake_predictions(root, name, method, steps, targets=("a red dot", "yes"), seed=0, tasks="xy"):
    """A run folder with results.json and predictions/: samples x/0 (task x, a caption) and y/0 (task y, QA), of
    `tasks`; `steps` = [(step name, (x's answer, y's answer))], zero-shot first."""
    d = root / name
    (d / "predictions").mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"method": method, "args": {"seed": seed}}))
    refs = [{"task": "x", "id": "0", "rule": "cider10", "instruction": "describe.", "target": targets[0]},
            {"task": "y", "id": "0", "rule": "exact", "instruction": "is it | red?", "target": targets[1]}]
    refs = [r for r in refs if r["task"] in tasks]
    (d / "predictions" / "references.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    for i, (step, preds) in enumerate(steps):
        lines = [{"task": t, "id": "0", "pred": p, "score": 100.0 * (p == r["target"])} for t, p, r in zip("xy", preds, refs)]
        (d / "predictions" / f"step{i}_{step}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(d)


def test_compare_lines_up_steps_and_names_samples(tmp_path, capsys):
    ft = fake_predictions(tmp_path, "ft", "finetune", [("zero-shot", ("", "no")), ("x", ("a red dot", "no")),
                                                       ("y", ("a blue\ndot", "yes"))])
    joint = fake_predictions(tmp_path, "joint", "joint", [("zero-shot", ("", "no")), ("joint", ("a red dot", "yes"))])
    summarize(["--compare", ft, joint, "--sample", "x/0"])           # <task>/<id>: both tasks have a sample "0"
    assert capsys.readouterr().out == (
        '**0** (x, cider10), instruction "describe.", target "a red dot"\n\n'
        "| after | finetune | joint |\n|---|---|---|\n"
        "| zero-shot | (nothing) (0) | (nothing) (0) |\n"
        "| 1. x / joint | a red dot (100) | a red dot (100) |\n"
        "| 2. y | a blue dot (0) | - |\n\n")
    summarize(["--compare", ft, "--sample", "y/0"])                  # one run; a | in a cell is escaped
    assert capsys.readouterr().out.splitlines()[:3] == [
        '**0** (y, exact), instruction "is it \\| red?", target "yes"', "", "| after | answer (score) |"]
    summarize(["--compare", ft, ft])                                 # no --sample: one per task, seeded; same method
    out = capsys.readouterr().out
    assert out.count("| after | ft | ft |") == 2 and "**0** (x, " in out and "**0** (y, " in out


@pytest.mark.parametrize("argv, line", [
    ("--compare {FT} --sample 0", "--sample 0: 2 tasks of {FT} have it; name one as <task>/<id>: x/0, y/0"),
    ("--compare {FT} --sample z/0", "--sample z/0: no such test sample in {FT} (the first id of each task: 0, 0)"),
    ("--compare {FT} {OTHER} --sample x/0", "{OTHER}: its test sample 0 (x) is not the one of {FT} (another seed or data)"),
    ("--compare {FT} {FEWER} --sample y/0", "{FEWER}: has no test sample 0 (y), which {FT} has"),
    ("--compare {FT} {EMPTY}", "{EMPTY}: no predictions/references.jsonl (not a run folder, a run that has not "
                               "finished a task, or one made before runs kept their predictions)"),
    ("{EMPTY} --sample x/0", "--sample goes with --compare RUN [RUN ...]"),
])
def test_compare_errors_are_one_line(argv, line, tmp_path):
    dirs = {"FT": fake_predictions(tmp_path, "ft", "finetune", [("zero-shot", ("", "no"))]),
            "OTHER": fake_predictions(tmp_path, "other", "moincl", [("zero-shot", ("", "no"))], targets=("a cat", "no")),
            "FEWER": fake_predictions(tmp_path, "fewer", "joint", [("zero-shot", ("",))], tasks="x"),
            "EMPTY": str(tmp_path / "empty")}
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        summarize(argv.format(**dirs).split())
    assert str(e.value.code) == "error: " + line.format(**dirs)
