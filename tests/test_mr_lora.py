"""MR-LoRA: router prompt / letter parsing and fallback, expert isolation, router replay buffer, dcl data, smoke run."""
import copy
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mr_lora as M
from conftest import crash_and_resume, run_script, same_results, tiny_mllm
from common import ORDERS, add_lora
from data.load import Sample, Task, load_image, read_manifest
from data import generate as G


# ------------------------------------------------------------------------------------------ router prompt / parsing
def test_router_prompt_lists_seen_experts_and_keeps_request():
    q = M.router_prompt("what is the main object?", ["dcl-rs", "dcl-med"])
    assert q == "choose the expert for this request : A dcl rs , B dcl med . request : what is the main object?"
    vocab = set(G.vocabulary())          # the tiny word-level tokenizer must know every prompt word and letter
    for names in (ORDERS["micl"][1], ORDERS["dcl"][1], ORDERS["mcl"][1]):
        assert set(G._split_words(M.router_prompt("", names))) <= vocab
    assert set(G.EXPERT_LETTERS) <= vocab


def test_parse_letter_and_deterministic_fallback():
    assert M.parse_letter("B", 3) == 1 and M.parse_letter(" C. ", 3) == 2 and M.parse_letter("A expert", 1) == 0
    for garbage in ["", "zzz", "b", "a", "D", "J", "AB", "expert B"]:
        assert M.parse_letter(garbage, 3) is None, garbage
    picks, fell = M.route(["A", "", "zzz", "b", "D", "C"], 3)
    assert picks == [0, 2, 2, 2, 2, 2]                        # fallback = the most recent expert (index n-1)
    assert fell == [False, True, True, True, True, False] and sum(fell) == 4
    assert M.route(["", "zzz"], 3) == M.route(["", "zzz"], 3)   # deterministic


def test_router_sample_targets_letter_and_clears_token_cache():
    s = Sample("x/1", "image", "how many are there?", "two", ["two"], None, torch.zeros(2, 4), "dcl-med", _ids=(1, 2, 3))
    r = M.router_sample(s, ["dcl-rs", "dcl-med"], 1)
    assert r.target == "B" and r.answers == ["B"] and r._ids is None and r.feat is s.feat and r.task == "dcl-med"
    assert r.instruction.endswith("request : how many are there?") and s.target == "two"


# ------------------------------------------------------------------------------------------ replay buffer
def test_router_buffer_has_router_samples_per_seen_task():
    args = SimpleNamespace(seed=0, router_samples=20)
    tasks = [Task(n, [Sample(f"{n}/{i}", "text", f"q{i}", "a") for i in range(50)], []) for n in ["image-qa", "audio-cap", "video-qa"]]
    buffer = [M.draw_router_samples(task, args, t) for t, task in enumerate(tasks)]
    assert [len(b) for b in buffer] == [20, 20, 20] and all(len(set(b)) == 20 for b in buffer)
    assert buffer[0] == M.draw_router_samples(tasks[0], args, 0)        # same draw on resume
    data = M.router_data(tasks, buffer, 1)                              # step 2: only tasks 1 and 2 are seen
    assert len(data) == 40 and [d.target for d in data] == ["A"] * 20 + ["B"] * 20
    assert all("A image qa , B audio cap ." in d.instruction and "C " not in d.instruction for d in data)
    assert len(M.router_data(tasks, buffer, 2)) == 3 * args.router_samples


# ------------------------------------------------------------------------------------------ expert isolation
def _tiny_model():
    return tiny_mllm(["describe", "the", "image", ".", "answer", ":", "red", "blue"], {"image": 8})


def test_training_expert_k_leaves_earlier_experts_and_router_bit_identical():
    model = _tiny_model()
    args = SimpleNamespace(lora_r=4, lora_alpha=8, lr=1e-2, batch_size=4, epochs=1, max_steps=None, device="cpu", seed=0,
                           lr_schedule="constant")
    base = copy.deepcopy(model.projectors)
    data = [Sample(str(i), "image", "describe the image.", ["red", "blue"][i % 2], None, None, torch.randn(3, 8))
            for i in range(8)]
    projectors = {}
    for name in ["expert0", "router", "expert1"]:
        add_lora(model, args, name)
        projectors[name] = copy.deepcopy(base)
    M.train(model, projectors, "expert0", data, args, 0)
    M.train(model, projectors, "router", data, args, 0)
    snap = lambda: {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    before, proj_before = snap(), {n: copy.deepcopy(p.state_dict()) for n, p in projectors.items()}
    M.train(model, projectors, "expert1", data, args, 1)
    after = snap()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".expert1." in k for k in changed)            # expert 1 learned, nothing else moved
    assert any(".expert0." in k for k in before) and any(".router." in k for k in before)
    for n in ["expert0", "router"]:
        assert all(torch.equal(v, projectors[n].state_dict()[k]) for k, v in proj_before[n].items())
    assert not all(torch.equal(v, projectors["expert1"].state_dict()[k]) for k, v in proj_before["expert1"].items())
    assert all(torch.equal(v, model.projectors.state_dict()[k]) for k, v in projectors["expert1"].state_dict().items())


# ------------------------------------------------------------------------------------------ dcl data
def test_dcl_files_round_trip_with_domain_vocabulary(tmp_path):
    root = str(tmp_path)
    assert ORDERS["dcl"][1] == ["dcl-rs", "dcl-med", "dcl-ad", "dcl-sci", "dcl-fin"]
    means, questions = {}, set()
    for d in ORDERS["dcl"][1]:
        G.write_task(root, d, seed=0, sizes={"train": 12})
        rows = read_manifest(os.path.join(root, d, "train.jsonl"), d)
        vocab = set(G.DOMAIN_OBJECTS[d]) | set(G.DOMAIN_PLACES[d]) | set(G.NUMBERS[1:4])
        assert all(r.modality == "image" and r.answers == [r.target] and r.target in vocab for r in rows)
        assert {r.target for r in rows} & set(G.DOMAIN_OBJECTS[d] + list(G.DOMAIN_PLACES[d]))   # domain words appear
        imgs = [load_image(r.media) for r in rows]
        assert all(im.shape == (G.IMG, G.IMG, 3) for im in imgs)
        means[d] = np.mean([im.reshape(-1, 3).mean(0) for im in imgs], 0)
        questions |= {r.instruction for r in rows}
    assert questions <= {q for q, _ in G.DOMAIN_QUESTIONS}               # one instruction format for every domain
    ds = list(means)
    for i in range(len(ds)):                                            # distinct visual statistics (mean colour)
        for j in range(i + 1, len(ds)):
            assert np.abs(means[ds[i]] - means[ds[j]]).max() > 15, (ds[i], ds[j])
    corpus = {(q, a) for _, q, a in G.text_corpus(n_per_task=50, n_text=0)}
    assert ("what is the main object?", "lymphocyte") in corpus or ("what is the main object?", "tumor") in corpus


def test_letter_choice_items_are_pretraining_only():
    """The tiny LLM's letter-choice questions: the answer is the letter of the named option; they are in the
    pretraining corpus, never in the text-only benchmark set (which MR-LoRA's text retention is measured on)."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        q, a = G.letter_choice_item(rng)
        head, menu = q.rstrip(" .").split(" : ")
        options = dict(o.split() for o in menu.split(" , "))
        assert options[a] == head.split()[-1] and len(options) >= 2
    corpus = G.text_corpus(n_per_task=1, n_text=10, n_letter=20)
    assert sum(q.startswith("choose the letter") for _, q, _ in corpus) == 20
    rng = np.random.default_rng(1)
    assert not any(G.sample_text_item(rng)[0].startswith("choose") for _ in range(500))


# ------------------------------------------------------------------------------------------ smoke run
SMOKE = ["--tasks", "audio-cap,image-cap,video-qa", "--train-limit", "16", "--test-limit", "8", "--epochs", "1",
         "--batch-size", "8", "--router-epochs", "1"]                  # three modalities, both task types


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("mr_lora") / "run"
    run_script("mr_lora.py", out, *SMOKE, process=True)   # the script as a user runs it
    return out


def test_smoke_run(smoke):
    res = json.load(open(smoke / "results.json"))
    assert len(res["R"]) == 3 and all(len(row) == 3 for row in res["R"])
    assert 0 <= res["metrics"]["router_accuracy"] <= 100 and res["metrics"]["router_fallbacks"] >= 0
    assert len(res["metrics"]["router_accuracy_steps"]) == 3
    C = np.array(res["metrics"]["router_confusion"])          # every test sample of a task lands in its row once
    assert C.shape == (3, 3) and (C.sum(1) == 8).all()
    assert np.isclose(100 * np.trace(C) / C.sum(), res["metrics"]["router_accuracy"])
    assert os.path.isdir(smoke / "checkpoints" / "task2_video-qa" / "lora" / "expert2")


def test_oracle_columns_stay_fixed_once_learned(tmp_path):
    """With ground-truth routing each task is always answered by its own frozen expert and projector set, so
    R[i][j] = R[j][j] for every later step i (fails if experts shared projectors or the oracle misrouted)."""
    run_script("mr_lora.py", tmp_path / "oracle", *SMOKE, "--oracle")
    R = json.load(open(tmp_path / "oracle" / "results.json"))["R"]
    assert all(R[i][j] == R[j][j] for j in range(len(R)) for i in range(j, len(R)))


def test_resume_after_a_crash_gives_same_results(smoke, tmp_path):
    """Experts, their projector sets, the router and its replay buffer come back from the checkpoint."""
    crash_and_resume("mr_lora.py", tmp_path / "crashed", *SMOKE)
    assert same_results(smoke, tmp_path / "crashed")
