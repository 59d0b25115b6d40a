import json
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TQDM_DISABLE", "1")
# the tests check plumbing, not accuracy: a throwaway tiny base pretrained for 30 steps (seconds, cached apart from
# the default budget of the shipped base); export MLLM_CL_TINY_STEPS=600 to test on the real one
os.environ.setdefault("MLLM_CL_TINY_STEPS", "30")


def pytest_configure(config):
    # the library deprecation common.py silences for users (pytest resets warning filters for every test)
    config.addinivalue_line("filterwarnings", "ignore:.*is_gradient_checkpointing.*:FutureWarning")


def run_script(script, out, *flags, check=True, timeout=300, process=False):
    """Run `<script> --output-dir out <flags>` from the repository root; returns a CompletedProcess. By default the
    script's main(argv) runs in this process: the same code path minus the interpreter start (importing torch,
    transformers and peft costs ~6 s a run). process=True runs `python <script>` as a user does, for what only a
    process shows (its exit status, everything that reaches stderr, signals)."""
    argv = ["--output-dir", str(out), *flags]
    if process:
        r = subprocess.run([sys.executable, os.path.join(ROOT, script), *argv], capture_output=True, text=True,
                           cwd=ROOT, timeout=timeout, env=dict(os.environ, TQDM_DISABLE="1"))
    else:
        r = _in_process(script, argv)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _in_process(script, argv):
    """main(argv) of a script, with its stdout / stderr captured and a SystemExit turned into an exit status (a
    UserError's one line goes to stderr, as Python prints it); any other exception propagates (a traceback)."""
    import contextlib
    import importlib
    import io
    mod = importlib.import_module(os.path.splitext(script)[0])
    out, err, code, cwd = io.StringIO(), io.StringIO(), 0, os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            mod.main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if isinstance(e.code, str):
            err.write(e.code + "\n")
        _close_runs()       # here, while the exception's traceback still holds the run that stopped
    except BaseException:
        _close_runs()
        raise
    finally:
        os.chdir(cwd)
        for s, h in handlers.items():   # Run installs SIGINT / SIGTERM handlers; a run that errors leaves them
            signal.signal(s, h)
    return subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())


def _close_runs():
    """What the end of a process does for a run that stopped on an error: release its folder's lock."""
    import gc
    import warnings
    from common import Run
    with warnings.catch_warnings():   # (isinstance on every live object touches torch's deprecated aliases)
        warnings.simplefilter("ignore")
        runs = [o for o in gc.get_objects() if isinstance(o, Run)]
    for run in runs:
        run.close()


class Crash(BaseException):
    """What no handler of a script catches (not an Exception, not a SystemExit): the run stops where it is."""


def crash_and_resume(script, out, *flags, after=1):
    """Run the script in this process and crash it in task `after` + 1, once that task has trained and before it is
    evaluated or checkpointed (what a kill -9 there would leave); check nothing looks finished, then `--resume` it
    to the end. Returns the number of tasks that were done at the crash. (kill -9 and Ctrl-C of a real process, with
    resume: test_robust.py.)"""
    import pytest

    from common import Run
    end_task = Run.end_task

    def crashing_end_task(self, t, *a, **k):
        if t == after:
            raise Crash
        return end_task(self, t, *a, **k)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Run, "end_task", crashing_end_task)
        with pytest.raises(Crash):
            run_script(script, out, *flags)
    done = json.load(open(os.path.join(out, "state.json")))["state"]["done"]
    assert done == after and not os.path.exists(os.path.join(out, "results.json"))
    r = run_script(script, out, *flags, "--resume")
    assert f"resuming {out} after step {done}/" in r.stdout
    return done


def same_results(a, b):
    """Two finished runs are identical: R, text-only row and metrics, every task's saved weights (LoRA and
    projectors, byte for byte), which show a difference that greedy decoding hides, and every evaluation's
    predictions/ file (byte for byte)."""
    import glob
    ra, rb = (json.load(open(os.path.join(d, "results.json"))) for d in (a, b))
    files = [sorted(glob.glob(os.path.join(d, "checkpoints", "*", "**", "*.safetensors"), recursive=True)) +
             sorted(glob.glob(os.path.join(d, "predictions", "*.jsonl"))) for d in (a, b)]
    assert [os.path.relpath(p, a) for p in files[0]] == [os.path.relpath(p, b) for p in files[1]]
    names = [os.path.basename(p) for p in files[0]]
    assert any(n.endswith(".safetensors") for n in names) and "references.jsonl" in names
    assert sum(n.startswith("step") for n in names) == 1 + len(ra["steps"])          # zero-shot + one per step
    return all(ra[k] == rb[k] for k in ("R", "zero_shot", "text", "metrics")) and all(
        open(pa, "rb").read() == open(pb, "rb").read() for pa, pb in zip(*files))


def tiny_mllm(words, enc_dims):
    """A 1-layer Llama MLLM over a word-level tokenizer of `words`, frozen, with projectors for `enc_dims`
    ({modality: encoder width}); seeded, so two calls give identical models. For unit tests of method pieces."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from common import MLLM
    from data.tiny import _build_tokenizer
    tok = _build_tokenizer(words)
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    for p in llm.parameters():
        p.requires_grad_(False)
    return MLLM(llm, tok, enc_dims)
