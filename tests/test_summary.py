"""`python common.py summarize`: the markdown table and the summary picture, on hand-written results.json files."""
import json
import os
import subprocess
import sys

from PIL import Image

from common import ROOT


def fake_run(root, method, scenario, order, seed, metrics, total_s=120.0, brg_steps=None):
    d = root / f"{method}__{scenario}__order{order}__seed{seed}"
    d.mkdir(parents=True)
    res = {"method": method, "args": {"scenario": scenario, "order": order, "seed": seed}, "metrics": metrics,
           "timings": {"total_s": total_s}, "brg_steps": brg_steps}
    (d / "results.json").write_text(json.dumps(res))


def test_summarize_table_and_png(tmp_path):
    fake_run(tmp_path, "finetune", "micl", 1, 0, {"last": 40.0, "bwt": -50.0, "text_retention": 30.0})
    fake_run(tmp_path, "finetune", "micl", 1, 1, {"last": 50.0, "bwt": -40.0, "text_retention": 20.0}, 180.0)
    fake_run(tmp_path, "joint", "micl", 1, 0, {"last": 90.0, "text_retention": 35.0})
    fake_run(tmp_path, "mera", "mcl", 2, 0, {"last": 60.0, "bwt": -2.0, "brg": 97.0}, brg_steps=[99.0, 97.0])
    fake_run(tmp_path, "mera", "mcl", 2, 1, {"last": 60.0, "bwt": -2.0, "brg": 97.0}, brg_steps=[96.0, 97.0])
    png = tmp_path / "pic" / "s.png"
    png.parent.mkdir()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "common.py"), "summarize", str(tmp_path), "--png", str(png)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "#### micl" in r.stdout and "#### mcl" in r.stdout
    assert "| finetune | 1 | 0,1 | 45.0 ± 5.0 | -45.0 ± 5.0 | 25.0 ± 5.0 | - | 2.5 |" in r.stdout
    assert "| joint | 1 | 0 | 90.0 ± 0.0 | - | 35.0 ± 0.0 | - | 2.0 |" in r.stdout
    assert "| mera | 2 | 0,1 | 60.0 ± 0.0 | -2.0 ± 0.0 | 97.0 ± 0.0 | 97.5 / 97.0 | 2.0 |" in r.stdout   # BRG per step
    w, h = Image.open(png).size
    assert 500 <= w <= 1200 and 100 <= h <= 600      # two headers + three method rows


def test_summarize_default_png_and_empty_root(tmp_path):
    fake_run(tmp_path, "finetune", "dcl", 1, 0, {"last": 36.0, "bwt": -72.0, "router_accuracy": 99.0})
    cmd = [sys.executable, os.path.join(ROOT, "common.py"), "summarize", str(tmp_path)]
    assert subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=60).returncode == 0
    assert Image.open(tmp_path / "summary.png").size[0] > 500
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run(cmd[:-1] + [str(empty)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode != 0 and "no results.json" in r.stderr
