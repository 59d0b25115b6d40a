"""Fail loudly, lose nothing (issue #23): a diverged task stops the run with one line and saves nothing of itself,
Ctrl-C / SIGTERM end with one line and resume to the same results, a live run's folder is refused to a second process
and a dead process's lock is taken over. (Model folders and every other kind of bad input: test_bad_input.py.)"""
import importlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import common as C
import data.load as L
from conftest import ROOT, run_script, same_results, tiny_mllm

NAMES = ["audio-cap", "image-cap", "video-qa"]                               # finetune over three tasks
SMOKE = ["--tasks", ",".join(NAMES), "--train-limit", "8", "--test-limit", "4", "--max-steps", "2"]


def start(out, *flags):
    """A run in the background, SIGINT at its default (a test runner started in the background ignores it)."""
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "baselines.py"), "--output-dir", str(out), *SMOKE, *flags],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TQDM_DISABLE="1"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def done(out):
    try:
        with open(os.path.join(out, "state.json")) as f:
            return json.load(f)["state"]["done"]
    except (OSError, ValueError):
        return -1


def wait_done(p, out, n):
    t0 = time.time()
    while done(out) < n:
        assert p.poll() is None, p.stderr.read()
        assert time.time() - t0 < 300
        time.sleep(0.02)


def leftovers(out):
    """Temp files / folders anywhere in a run folder."""
    return [os.path.join(r, n) for r, ds, fs in os.walk(out) for n in ds + fs if ".tmp" in n]


def one_line(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run_script("baselines.py", out, *SMOKE)
    return out


@pytest.fixture
def keep_signal_handlers():
    """In-process runs install Run's SIGINT / SIGTERM handlers; a run that stops with an error leaves them."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in old.items():
        signal.signal(s, h)


# ---------------------------------------------------------------------------------------------- divergence
DIVERGE_LR = "1e20"    # the first Adam step overflows float32 on any CPU; at 1e4 the diverging step depends on the CPU


def test_divergence_stops_with_one_line_and_writes_no_results(tmp_path):
    """The issue's command: every projector weight went NaN and a normal-looking results.json said 0.0."""
    out = tmp_path / "run"
    r = run_script("baselines.py", out, "--method", "finetune", "--lr", DIVERGE_LR, "--max-steps", "5",
                   "--train-limit", "16", "--test-limit", "4", check=False)
    line = one_line(r.stderr)
    assert r.returncode == 1
    assert line.startswith("error: task 1/6 audio-cap: diverged at step ") and "(loss nan)" in line and "lower --lr" in line
    assert not (out / "results.json").exists() and not (out / "checkpoints").exists() and done(out) == 0


@pytest.mark.parametrize("script, flags, where, flag", [
    ("baselines", ["--method", "finetune"], "task 1/6 audio-cap", "--lr"),
    ("baselines", ["--method", "joint"], "joint (all tasks)", "--lr"),
    ("baselines", ["--method", "replay"], "task 1/6 audio-cap", "--lr"),
    ("baselines", ["--method", "lwf"], "task 1/6 audio-cap", "--lr"),
    ("baselines", ["--method", "ewc"], "task 1/6 audio-cap", "--lr"),
    ("baselines", ["--method", "olora"], "task 1/6 audio-cap", "--lr"),
    ("moincl", [], "task 1/6 audio-cap", "--lr"),
    ("mr_lora", ["--router-epochs", "4"], "task 1/6 audio-cap", "--lr"),                      # an expert
    ("mr_lora", ["--router-epochs", "4", "--router-lr", DIVERGE_LR, "--lr", "1e-3"], "router 1/6", "--router-lr"),
    ("mera", ["--scenario", "mcl"], "task 1/3 image", "--lr"),                                 # fine-tuning
    ("mera", ["--scenario", "mcl", "--realign-lr", DIVERGE_LR, "--lr", "1e-3"], "realign after task 1", "--realign-lr"),
])
def test_every_training_loop_checks_its_loss(script, flags, where, flag, tmp_path, keep_signal_handlers):
    """The loss check (not only the weights check after the task) fires in every method's loop: 'at step k'."""
    main = importlib.import_module(script).main
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["--output-dir", str(out), "--train-limit", "8", "--test-limit", "1", "--max-steps", "4",
              "--lr", DIVERGE_LR, *flags])
    msg = str(e.value.code)
    assert msg.startswith(f"error: {where}: diverged at step ") and f"try a lower {flag} " in msg, msg
    assert not (out / "results.json").exists() and not (out / "checkpoints").exists()


def test_check_finite_names_stream_and_step():
    torch.manual_seed(0)
    args = type("A", (), {"epochs": 1, "batch_size": 2, "max_steps": None, "seed": 0})()
    gen = C.batches(list(range(6)), args, 0, desc="task 2/6 image-cap")
    next(gen), next(gen)
    C.check_finite(torch.tensor(1.5))                                   # finite: nothing happens
    for bad in (float("nan"), float("inf")):
        with pytest.raises(C.UserError, match=r"^error: task 2/6 image-cap: diverged at step 2 \(loss (nan|inf)\)"):
            C.check_finite(torch.tensor(bad))


def _tiny_run(tmp_path):
    words = ["what", "colour", "red", "blue", "answer:", "image:"]
    model = tiny_mllm(words, {"image": 8})
    C.add_lora(model, type("A", (), {"lora_r": 2, "lora_alpha": 4})())
    s = lambda i: L.Sample(str(i), "image", "what colour", "red", ["red"], feat=torch.randn(4, 8), task="t")
    tasks = [L.Task("t", [s(0), s(1)], [s(2)]), L.Task("u", [s(3)], [s(4)])]
    text = L.Task("text", [], [L.Sample("x", "text", "what colour", "red", ["red"])])
    args = type("A", (), {"output_dir": str(tmp_path / "run"), "resume": False, "fingerprint": {"llm": "x"},
                          "lr": 1e-3, "device": "cpu"})()
    return C.Run(args, tasks, text), model, args


def test_nonfinite_weights_save_nothing_of_the_task(tmp_path, keep_signal_handlers):
    """A step can leave inf/NaN weights with a finite loss: end_task refuses before evaluating or saving."""
    run, model, args = _tiny_run(tmp_path)
    with torch.no_grad():
        model.projectors["image"][1].weight[0, 0] = float("inf")
    with pytest.raises(C.UserError, match=r"task 1/2 t: training diverged \(non-finite values in projectors\.image\.1\.weight\)"):
        run.end_task(0, model, lambda ss: ["red"] * len(ss))
    with torch.no_grad():
        model.projectors["image"][1].weight[0, 0] = 0.0
    with pytest.raises(C.UserError, match=r"non-finite values in method state\.fisher\.w"):    # the method's state too
        run.end_task(0, model, lambda ss: ["red"] * len(ss), extra={"fisher": {"w": torch.tensor([float("nan")])}})
    assert not os.path.exists(run.ckpt_dir(0)) and done(args.output_dir) == 0
    run.end_task(0, model, lambda ss: ["red"] * len(ss))                  # finite: saved
    assert os.path.exists(run.ckpt_dir(0)) and done(args.output_dir) == 1
    run.close()


# ---------------------------------------------------------------------------------------------- interruption
def test_ctrl_c_then_resume_gives_the_same_results(reference, tmp_path):
    """Ctrl-C of the script's process after task 1 is checkpointed: one line, exit 130, a consistent folder;
    --resume gives the uninterrupted run's results."""
    out = tmp_path / "run"
    p = start(out)
    wait_done(p, out, 1)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=120)[1]
    k = done(out)
    assert p.returncode == 130
    assert one_line(err) == f"interrupted in task {k + 1} ({NAMES[k]}); --resume continues after task {k}"
    assert not (out / "results.json").exists() and not leftovers(out)
    r = run_script("baselines.py", out, *SMOKE, "--resume")
    assert f"resuming {out} after step {k}/3" in r.stdout
    assert same_results(reference, out)


def sigterm_after(monkeypatch, module, name):
    """Make `module.name` send this process SIGTERM after it returns (the handler Run installed acts at once)."""
    fn = getattr(module, name)

    def then_sigterm(*a, **k):
        out = fn(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
        return out
    monkeypatch.setattr(module, name, then_sigterm)


def test_sigterm_then_a_diverged_resume_then_resume(reference, tmp_path, monkeypatch, keep_signal_handlers):
    """SIGTERM (a scheduler's stop) right after task 1 is checkpointed, sent in this process (same handler as
    Ctrl-C above): one line, exit 143. The resumed run first diverges (--lr 1e4): that task saves nothing, and a
    second --resume (usual lr) still ends with the uninterrupted results."""
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        sigterm_after(m, C.Run, "end_task")
        r = run_script("baselines.py", out, *SMOKE, check=False)
    assert r.returncode == 143 and done(out) == 1
    assert one_line(r.stderr) == f"interrupted in task 2 ({NAMES[1]}); --resume continues after task 1"
    assert not (out / "results.json").exists() and not leftovers(out)
    r = run_script("baselines.py", out, *SMOKE, "--resume", "--lr", "1e4", check=False)
    line = one_line(r.stderr)               # (2 steps: here the weights go non-finite while the loss is finite)
    assert line.startswith(f"error: task 2/3 {NAMES[1]}: ") and "diverged" in line and "lower --lr" in line
    assert done(out) == 1 and not os.path.exists(out / "checkpoints" / f"task1_{NAMES[1]}")
    assert (out / "checkpoints" / f"task0_{NAMES[0]}" / "resume.pt").exists()
    assert not (out / "results.json").exists()
    r = run_script("baselines.py", out, *SMOKE, "--resume")
    assert f"resuming {out} after step 1/3" in r.stdout
    assert same_results(reference, out)


def test_interrupt_before_any_task_finished(tmp_path, monkeypatch, keep_signal_handlers):
    """SIGTERM in task 1's first training step: nothing to resume from, and the line says so."""
    import baselines
    out = tmp_path / "run"
    sigterm_after(monkeypatch, baselines, "check_finite")
    r = run_script("baselines.py", out, *SMOKE, check=False)
    assert r.returncode == 143 and done(out) == 0
    assert one_line(r.stderr) == f"interrupted in task 1 ({NAMES[0]}); --resume starts from the beginning"
    assert not leftovers(out) and not (out / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------- concurrency
def test_second_process_is_refused_and_a_dead_ones_lock_taken_over(reference, tmp_path):
    """A fresh run on a live run's folder would delete it: it is refused, naming the folder and the live process,
    as is --resume. (The live run is stopped with SIGSTOP after task 1 so that it is surely alive meanwhile; it
    holds its lock all the same.) Then it is killed -9: its lock is stale, --resume takes it over and ends with the
    uninterrupted results, so the refused processes deleted nothing."""
    out = tmp_path / "run"
    p = start(out)
    wait_done(p, out, 1)
    p.send_signal(signal.SIGSTOP)
    k = done(out)
    for extra in ([], ["--resume"]):
        r = run_script("baselines.py", out, *SMOKE, *extra, check=False)
        line = one_line(r.stderr)
        assert r.returncode == 1 and line.startswith(f"error: --output-dir {out} is in use by a live run (pid {p.pid}: ")
        assert done(out) == k and (out / "checkpoints" / f"task{k - 1}_{NAMES[k - 1]}" / "resume.pt").exists()
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (out / ".lock").exists() and not (out / "results.json").exists()
    r = run_script("baselines.py", out, *SMOKE, "--resume")
    assert f"resuming {out} after step {k}/3" in r.stdout
    assert same_results(reference, out)


def test_lock_is_per_folder_and_released(tmp_path):
    """The lock itself, in-process: held while a Run lives, free after close(); a lock file alone is no lock."""
    from types import SimpleNamespace
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text("pid 999999: a process that is gone\n")
    args = SimpleNamespace(output_dir=str(tmp_path / "run"), resume=False, fingerprint={})
    C.probe_lock(args.output_dir)                                        # stale: passes
    tasks = [L.Task("t", [], [])]
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    run = C.Run(args, tasks, tasks[0])
    assert signal.getsignal(signal.SIGTERM) == run._on_signal
    # (a flock belongs to the open file, not the process: a probe from this process meets the lock as another's would)
    with pytest.raises(C.UserError, match=rf"in use by a live run \(pid {os.getpid()}: "):
        C.probe_lock(args.output_dir)
    run.close()
    assert {s: signal.getsignal(s) for s in old} == old
    C.probe_lock(args.output_dir)


def test_a_killed_runs_temp_files_are_removed(tmp_path, keep_signal_handlers):
    """kill -9 in the middle of a checkpoint / predictions / state write leaves temp files, and the predictions of a
    step whose state was not written: the next Run on the folder removes them (so nothing half-written is ever read
    as finished) and keeps everything else."""
    run, model, args = _tiny_run(tmp_path)
    run.end_task(0, model, lambda ss: ["red"] * len(ss))
    run.close()
    out = tmp_path / "run"
    assert sorted(os.listdir(out / "predictions")) == ["references.jsonl", "step1_t.jsonl"]
    half = [out / "checkpoints" / "task1_t.tmp" / "lora", out / "state.json.4242.tmp", out / "results.json.4242.tmp",
            out / "matrix.png.tmp.png", out / "predictions" / "step2_u.jsonl.4242.tmp"]
    half[0].mkdir(parents=True)
    for p in half[1:]:
        p.write_text("half")
    before = sorted(p for p in out.rglob("*") if ".tmp" not in str(p))
    (out / "predictions" / "step2_u.jsonl").write_text("a whole file of step 2, whose state was never written\n")
    args.resume = True
    run = C.Run(args, run.tasks, run.text)
    assert run.start == 1 and not [p for p in out.rglob("*") if ".tmp" in str(p)]
    assert sorted(out.rglob("*")) == before
    run.close()


def test_a_signal_during_the_checkpoint_write_waits_for_it(tmp_path, keep_signal_handlers, monkeypatch, capsys):
    """SIGTERM in the middle of end_task's checkpoint + state write: the write completes, then the run ends (143)
    saying that --resume continues after that task."""
    run, model, args = _tiny_run(tmp_path)
    save = C.save_checkpoint

    def save_interrupted(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)                  # Python runs the handler right after this line
        save(*a, **k)
    monkeypatch.setattr(C, "save_checkpoint", save_interrupted)
    with pytest.raises(SystemExit) as e:
        run.end_task(0, model, lambda ss: ["red"] * len(ss))
    assert e.value.code == 143 and done(args.output_dir) == 1 and os.path.exists(os.path.join(run.ckpt_dir(0), "resume.pt"))
    assert capsys.readouterr().err.strip() == "interrupted in task 2 (u); --resume continues after task 1"
    run.close()
