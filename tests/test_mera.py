"""MERA: the running-average merge (plain tensors and its LoRA fold-in form), exact replay of the merge for
--resume, realignment touching only projectors, ablation run names, and one tiny end-to-end run."""
import functools
import json
import os
from types import SimpleNamespace

import pytest
import torch

import common as C
import data.load as L
import mera
from data.tiny import _build_tokenizer
from conftest import crash_and_resume, run_script, same_results



@functools.lru_cache(maxsize=1)
def _tokenizer():
    return _build_tokenizer(["what", "colour", "are", "the", "shapes", "red", "answer", "image", "audio", "video",
                               "?", ":", "."])


def _tiny_mllm(seed=0):
    """A tiny random Llama MLLM (3 projectors) with one LoRA adapter; no pretraining needed for these checks."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    tok = _tokenizer()
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=4, pad_token_id=tok.pad_token_id,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    for p in llm.parameters():
        p.requires_grad_(False)
    m = C.MLLM(llm, tok, {"image": 8, "video": 8, "audio": 8})
    C.add_lora(m, SimpleNamespace(lora_r=4, lora_alpha=8))
    return m


def _random_lora(m, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in mera.lora_layers(m.llm).values():
            for w in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
                w.copy_(torch.randn(w.shape, generator=g) * 0.1)


def _base_weights(m):
    return {n: l.get_base_layer().weight.detach().clone() for n, l in mera.lora_layers(m.llm).items()}


def test_running_average_is_plain_mean_of_vanilla_models():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 7, generator=g)
    deltas = [torch.randn(5, 7, generator=g) for _ in range(3)]
    theta = None
    for i, d in enumerate(deltas, 1):               # theta_i = ((i-1)/i) theta_{i-1} + (1/i) theta_{i,vanilla}
        theta = base + d if i == 1 else mera.running_average(theta, base + d, 1 / i)
    assert torch.allclose(theta, base + torch.stack(deltas).mean(0), atol=1e-6)


def test_lora_merge_equals_mean_of_vanilla_models_and_resets_lora():
    """Three MERA steps on a real peft model: each step's vanilla model is theta_{i-1} + Delta_i; after folding,
    the base weights equal the plain mean of the three vanilla models = theta_0 + sum_i Delta_i / i, and the fresh
    LoRA (B = 0) leaves the merged model unchanged."""
    m = _tiny_mllm()
    w0 = _base_weights(m)
    vanillas, deltas = [], []
    for i in (1, 2, 3):
        _random_lora(m, seed=i)
        f = mera.lora_factors(m.llm)
        deltas.append({n: s * B @ A for n, (A, B, s) in f.items()})
        vanillas.append({n: w + deltas[-1][n] for n, w in _base_weights(m).items()})
        mera.merge_into_base(m.llm, f, 1 / i)
        mera.reset_lora(m.llm, seed=i)
        assert all(not l.lora_B["default"].weight.any() for l in mera.lora_layers(m.llm).values())
    merged = _base_weights(m)
    for n in w0:
        mean_vanilla = torch.stack([v[n] for v in vanillas]).mean(0)
        assert torch.allclose(merged[n], mean_vanilla, atol=1e-6), n
        assert torch.allclose(merged[n], w0[n] + deltas[0][n] + deltas[1][n] / 2 + deltas[2][n] / 3, atol=1e-6), n
        assert not torch.allclose(merged[n], vanillas[-1][n], atol=1e-4)      # the merge did something


def test_full_weight_merge_reproduces_the_live_lora():
    """merge_into_base(w = 1) then a fresh LoRA gives the outputs of the live LoRA: the delta is scaling * B @ A
    with peft's own scaling (alpha / r), not B @ A alone."""
    m = _tiny_mllm()
    _random_lora(m, seed=7)
    b = m.collate([L.Sample("a0", "audio", "what colour are the shapes?", "red", ["red"], feat=torch.randn(4, 8))])
    with torch.no_grad():
        live = m(b)
        mera.merge_into_base(m.llm, mera.lora_factors(m.llm), 1.0)
        mera.reset_lora(m.llm, seed=8)
        assert torch.allclose(m(b), live, atol=1e-5)


def test_no_merge_keeps_vanilla_and_replay_is_bit_identical():
    m, fresh = _tiny_mllm(), _tiny_mllm()
    history = []
    for i, w in ((1, 1.0), (2, 0.5)):
        _random_lora(m, seed=10 + i)
        f = mera.lora_factors(m.llm)
        vanilla = {n: W + f[n][2] * f[n][1] @ f[n][0] for n, W in _base_weights(m).items()}
        mera.merge_into_base(m.llm, f, w)
        history.append((w, f))
        if w == 1.0:                                   # --no-merge: theta_i = theta_{i,vanilla}
            assert all(torch.allclose(_base_weights(m)[n], v, atol=1e-6) for n, v in vanilla.items())
    for w, f in history:                               # what --resume does: replay the merges on theta_0
        mera.merge_into_base(fresh.llm, f, w)
    assert all(torch.equal(a, b) for a, b in zip(_base_weights(m).values(), _base_weights(fresh).values()))


def test_realign_changes_only_seen_projectors():
    m = _tiny_mllm()
    _random_lora(m, seed=3)                            # non-zero LoRA: it must stay frozen too
    g = torch.Generator().manual_seed(0)
    replay = [L.Sample(f"{mod}{k}", mod, "what colour are the shapes?", "red", ["red"], feat=torch.randn(4, 8, generator=g))
              for mod in ("image", "audio") for k in range(6)]
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    args = SimpleNamespace(seed=0, batch_size=4, max_steps=None, epochs=1, realign_epochs=2, realign_lr=1e-2, device="cpu")
    mera.realign(m, replay, args, t=0)
    for n, p in m.named_parameters():
        if n.startswith("projectors.image") or n.startswith("projectors.audio"):
            continue
        assert torch.equal(p, before[n]), f"{n} changed during realignment"
    for mod in ("image", "audio"):
        assert any(not torch.equal(p, before[f"projectors.{mod}.{k}"]) for k, p in m.projectors[mod].named_parameters())
    assert all(p.requires_grad for n, p in m.llm.named_parameters() if "lora_" in n)     # LoRA trainable again


def test_realign_set_replay_ids_and_newest_full():
    mk = lambda name, n: L.Task(name, [L.Sample(f"{name}/{k}", "image", "q", "a", ["a"]) for k in range(n)], [])
    tasks = [mk("image", 10), mk("video", 10), mk("audio", 10)]
    ids = {"image": ["image/1", "image/4"], "video": ["video/0"], "audio": ["audio/7", "audio/9"]}
    got = lambda t, full: [s.id for s in mera.realign_set(tasks, t, ids, full)]
    assert got(1, False) == ["image/1", "image/4", "video/0"]                   # every seen task: its replay ids
    assert got(2, False) == ["image/1", "image/4", "video/0", "audio/7", "audio/9"]
    assert got(2, True) == ["image/1", "image/4", "video/0"] + [f"audio/{k}" for k in range(10)]   # newest: all
    assert got(0, True) == [f"image/{k}" for k in range(10)]


@pytest.mark.parametrize("flags,calls", [([], [0, 1, 2]), (["--no-realign-step1"], [1, 2]), (["--no-realign"], [])])
def test_realign_calls_per_step(flags, calls, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(mera, "realign", lambda model, replay, args, t: seen.append(t))
    run_script("mera.py", tmp_path / "run", *SMOKE, "--max-steps", "1", *flags)
    assert seen == calls


@pytest.mark.parametrize("flags,name", [([], "mera"), (["--no-realign"], "mera-merge-only"),
                                        (["--no-merge"], "mera-realign-only"),
                                        (["--no-realign-step1", "--realign-newest-full"], "mera-skip1-newfull")])
def test_ablation_run_names(flags, name):
    args = mera.get_args(["--scenario", "mcl"] + flags)
    assert args.run_name == name and args.output_dir.startswith(os.path.join("runs", name + "__mcl"))
    with pytest.raises(C.UserError):
        mera.get_args(["--replay-ratio", "0"])


SMOKE = ["--scenario", "mcl", "--train-limit", "16", "--test-limit", "8", "--epochs", "1", "--batch-size", "8"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("mera") / "run"
    run_script("mera.py", out, *SMOKE, process=True)   # the script as a user runs it
    return out


def test_smoke_run_mcl(smoke):
    res = json.load(open(smoke / "results.json"))
    assert len(res["R"]) == 3 and all(len(row) == 3 for row in res["R"])
    assert "brg" in res["metrics"] and res["method"] == "mera"


def test_resume_after_a_crash_gives_same_results(smoke, tmp_path):
    """The merged base weights are rebuilt from the merge history on --resume: same final results."""
    crash_and_resume("mera.py", tmp_path / "crashed", *SMOKE)
    assert same_results(smoke, tmp_path / "crashed")
