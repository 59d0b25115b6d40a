"""End-to-end behaviour of a run: outputs, determinism, refused resumes, bad output dirs (tiny budgets). Kill -9 +
--resume is tested per script (test_baselines, test_moincl, test_mr_lora, test_mera)."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from common import ROOT
from conftest import run_script

TINY = ["--train-limit", "16", "--test-limit", "8", "--epochs", "1"]


def run(script, out, *flags, check=True, process=False):
    return run_script(script, out, *TINY, *flags, check=check, timeout=600, process=process)


def results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    run("baselines.py", out, "--method", "finetune", process=True)     # the script as a user runs it
    return out


def test_finetune_outputs(finetune_run):
    r = results(finetune_run)
    assert r["tasks"] == ["audio-cap", "image-cap", "video-qa", "audio-qa", "image-qa", "video-cap"]
    assert len(r["R"]) == 6 and all(len(row) == 6 for row in r["R"])
    assert all(0 <= x <= 100 for row in r["R"] for x in row)
    assert len(r["zero_shot"]) == 6 and r["metrics"]["text_base"] is not None
    for k in ("last", "maa", "mft", "bwt", "forgetting", "brg", "text_retention"):
        assert k in r["metrics"]
    for k in ("python", "torch", "transformers", "peft", "device", "dtype", "effective_batch_size"):
        assert k in r["environment"]
    assert "| metric | value |" in open(finetune_run / "results.md").read()
    assert Image.open(finetune_run / "matrix.png").size[0] > 300
    ck = finetune_run / "checkpoints" / "task5_video-cap"
    assert (ck / "lora" / "adapter_model.safetensors").exists() and (ck / "projectors.safetensors").exists()


def test_same_seed_same_results(finetune_run, tmp_path):
    run("baselines.py", tmp_path / "again", "--method", "finetune")
    a, b = results(finetune_run), results(tmp_path / "again")
    assert a["R"] == b["R"] and a["zero_shot"] == b["zero_shot"] and a["text"] == b["text"]


def test_fingerprint_names_the_tiny_build(finetune_run):
    fp = json.load(open(finetune_run / "state.json"))["fingerprint"]
    assert all(fp[k].startswith("tiny-") for k in ("llm", "image_encoder", "audio_encoder"))


def test_resume_with_other_model_config_is_refused(finetune_run, tmp_path):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(finetune_run, out)
    r = run("baselines.py", out, "--method", "finetune", "--resume", "--lora-r", "4", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "different model" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_output_dir_that_is_not_a_run_is_kept(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    r = run("baselines.py", tmp_path, "--method", "finetune", check=False)
    assert r.returncode != 0 and "holds no run" in r.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_joint_single_row(tmp_path):
    run("baselines.py", tmp_path / "j", "--method", "joint")
    r = results(tmp_path / "j")
    assert len(r["R"]) == 1 and r["steps"] == ["joint"] and set(r["metrics"]) >= {"last", "text_retention"}


def test_summarize(finetune_run):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "summarize.py"), str(finetune_run.parent)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and "| finetune | 1 | 0 |" in r.stdout
