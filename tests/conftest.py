import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TQDM_DISABLE", "1")
# the tests check plumbing, not accuracy: a throwaway tiny base pretrained for 30 steps (seconds, cached apart from
# the default budget of the shipped base); export MLLM_CL_TINY_STEPS=600 to test on the real one
os.environ.setdefault("MLLM_CL_TINY_STEPS", "30")


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
    finally:
        os.chdir(cwd)
        import gc
        from common import Run
        for run in [o for o in gc.get_objects() if isinstance(o, Run)]:
            run.close()                 # what the end of a process does: a run that stopped on an error held its lock
        for s, h in handlers.items():   # Run installs SIGINT / SIGTERM handlers; a run that errors leaves them
            signal.signal(s, h)
    return subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())


def kill_and_resume(script, out, *flags, after=1):
    """Start a run, kill -9 it as soon as `after` tasks are checkpointed, check nothing looks finished, then
    `--resume` it to the end. Returns the number of tasks that were done at the kill."""
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, script), "--output-dir", str(out), *flags], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, TQDM_DISABLE="1"))
    state, t0 = os.path.join(out, "state.json"), time.time()
    while time.time() - t0 < 300:
        if os.path.exists(state) and json.load(open(state))["state"]["done"] >= after:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = json.load(open(state))["state"]["done"]
    assert done >= after and not os.path.exists(os.path.join(out, "results.json"))
    r = run_script(script, out, *flags, "--resume")
    assert f"resuming {out} after step {done}/" in r.stdout
    return done


def same_results(a, b):
    """R, text-only row and metrics of two finished runs are identical."""
    ra, rb = (json.load(open(os.path.join(d, "results.json"))) for d in (a, b))
    return all(ra[k] == rb[k] for k in ("R", "zero_shot", "text", "metrics"))


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
