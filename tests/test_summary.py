"""`python tools/summarize.py`: the markdown table and the summary picture, on hand-written results.json files."""
import json

import pytest
from PIL import Image

from tools.summarize import main as summarize      # what `python tools/summarize.py` runs (as a process: test_run.py)


def fake_run(root, method, scenario, order, seed, metrics, total_s=120.0, brg_steps=None):
    d = root / f"{method}__{scenario}__order{order}__seed{seed}"
    d.mkdir(parents=True)
    res = {"method": method, "args": {"scenario": scenario, "order": order, "seed": seed}, "metrics": metrics,
           "timings": {"total_s": total_s}, "brg_steps": brg_steps}
    (d / "results.json").write_text(json.dumps(res))


def test_summarize_table_and_png(tmp_path, capsys):
    fake_run(tmp_path, "finetune", "micl", 1, 0, {"last": 40.0, "bwt": -50.0, "text_retention": 30.0})
    fake_run(tmp_path, "finetune", "micl", 1, 1, {"last": 50.0, "bwt": -40.0, "text_retention": 20.0}, 180.0)
    fake_run(tmp_path, "joint", "micl", 1, 0, {"last": 90.0, "text_retention": 35.0})
    fake_run(tmp_path, "mera", "mcl", 2, 0, {"last": 60.0, "bwt": -2.0, "brg": 97.0}, brg_steps=[99.0, 97.0])
    fake_run(tmp_path, "mera", "mcl", 2, 1, {"last": 60.0, "bwt": -2.0, "brg": 97.0}, brg_steps=[96.0, 97.0])
    png = tmp_path / "pic" / "s.png"
    png.parent.mkdir()
    summarize([str(tmp_path), "--png", str(png)])
    out = capsys.readouterr().out
    assert "#### micl" in out and "#### mcl" in out
    assert "| finetune | 1 | 0,1 | 45.0 ± 5.0 | -45.0 ± 5.0 | 25.0 ± 5.0 | - | 2.5 |" in out
    assert "| joint | 1 | 0 | 90.0 ± 0.0 | - | 35.0 ± 0.0 | - | 2.0 |" in out
    assert "| mera | 2 | 0,1 | 60.0 ± 0.0 | -2.0 ± 0.0 | 97.0 ± 0.0 | 97.5 / 97.0 | 2.0 |" in out   # BRG per step
    w, h = Image.open(png).size
    assert 500 <= w <= 1200 and 100 <= h <= 600      # two headers + three method rows


def test_summarize_default_png_and_empty_root(tmp_path):
    fake_run(tmp_path, "finetune", "dcl", 1, 0, {"last": 36.0, "bwt": -72.0, "router_accuracy": 99.0})
    summarize([str(tmp_path)])
    assert Image.open(tmp_path / "summary.png").size[0] > 500
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        summarize([str(empty)])
    assert str(e.value.code) == f"error: {empty}: no results.json found"
