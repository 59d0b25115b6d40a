"""End-to-end behaviour of a run: outputs, determinism, refused resumes, bad output dirs (tiny budgets). Kill -9 +
--resume is tested per script (test_baselines, test_moincl, test_mr_lora, test_mera)."""
import json
import os
import subprocess
import sys

from types import SimpleNamespace

import pytest
from PIL import Image

from common import ROOT
from conftest import run_script
from tools.summarize import main as summarize, pick_samples, read_predictions

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


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("joint") / "run"
    run("baselines.py", out, "--method", "joint")
    return out


def test_joint_single_row(joint_run):
    r = results(joint_run)
    assert len(r["R"]) == 1 and r["steps"] == ["joint"] and set(r["metrics"]) >= {"last", "text_retention"}
    assert sorted(os.listdir(joint_run / "predictions")) == ["references.jsonl", "step0_zero-shot.jsonl",
                                                              "step1_joint.jsonl"]


def rescore(run_dir):
    """Every evaluation's scores recomputed with data.score from the run's predictions/ files alone: one
    {task: score} per evaluation, zero-shot first; each stored per-sample score is checked on the way."""
    from data.score import score_samples
    refs, steps = read_predictions(run_dir)
    sample = lambda r: SimpleNamespace(metric=r["rule"], target=r["target"], answers=r.get("answers", [r["target"]]),
                                       references=r.get("references"), annotators=r.get("annotators"))
    rows = []
    for _, _, preds in steps:
        assert list(preds) == list(refs)                    # every test sample, in test order
        row = {}
        for task in dict.fromkeys(t for t, _ in refs):
            keys = [k for k in refs if k[0] == task]
            scores = score_samples([sample(refs[k]) for k in keys], [preds[k]["pred"] for k in keys])
            assert scores == [preds[k]["score"] for k in keys], task
            row[task] = sum(scores) / len(scores)
        rows.append(row)
    return rows


@pytest.mark.parametrize("which", ["finetune", "joint"])
def test_predictions_give_the_results(which, finetune_run, joint_run):
    """R, zero_shot and the text-only row of results.json are the mean scores of the saved predictions, re-scored."""
    out = {"finetune": finetune_run, "joint": joint_run}[which]
    r, rows = results(out), rescore(out)
    assert len(rows) == 1 + len(r["steps"])
    assert [rows[0][t] for t in r["tasks"]] == r["zero_shot"] and rows[0]["text"] == r["metrics"]["text_base"]
    assert [[row[t] for t in r["tasks"]] for row in rows[1:]] == r["R"]
    assert [row["text"] for row in rows[1:]] == r["text"]


def test_results_md_shows_what_the_model_said(finetune_run):
    """One seeded test sample per task (and the text-only set): its answer after every step, as saved."""
    md = open(finetune_run / "results.md").read()
    assert "### What the model said" in md
    refs, steps = read_predictions(finetune_run)
    picks = pick_samples(refs, seed=0)
    assert [t for t, _ in picks] == results(finetune_run)["tasks"] + ["text"]
    for task, i in picks:
        table = md.split(f"**{i}** ({task}, ")[1].split("\n\n")[1].splitlines()
        assert table[0] == "| after | answer (score) |" and len(table) == 2 + 7      # zero-shot + six steps
        for line, (k, name, preds) in zip(table[2:], steps):
            x = preds[task, i]
            assert line.startswith(f"| {'zero-shot' if k == 0 else f'{k}. {name}'} | ") and line.endswith(
                f" ({x['score']:.0f}) |") and (x["pred"] or "(nothing)") in line


def test_compare_two_runs(finetune_run, joint_run):
    """`python tools/summarize.py --compare A B --sample ID`: one sample's answers after every step, side by side
    (joint's one step beside finetune's first); a bad id gives one line."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "summarize.py"), "--compare", str(finetune_run), str(joint_run)]
    r = subprocess.run([*cmd, "--sample", "image-cap/test/3"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith('**image-cap/test/3** (image-cap, cider10), instruction "describe the image.", target "')
    assert lines[2] == "| after | finetune | joint |" and len(lines) == 4 + 7
    assert lines[5].startswith("| 1. audio-cap / joint | ") and lines[-1].startswith("| 6. video-cap | ")
    assert lines[-1].endswith(") | - |")                      # joint has no sixth step
    with pytest.raises(SystemExit) as e:                       # (in this process: the same one line)
        summarize(cmd[2:] + ["--sample", "image-cap/test/999"])
    assert str(e.value.code) == (f"error: --sample image-cap/test/999: no such test sample in {finetune_run} (the "
                                 f"first id of each task: {', '.join(f'{t}/test/0' for t in results(finetune_run)['tasks'])}"
                                 f", text/test/0)")


def test_summarize(finetune_run):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "summarize.py"), str(finetune_run.parent)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and "| finetune | 1 | 0 |" in r.stdout
