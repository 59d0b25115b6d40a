"""MoInCL: distillation losses, PTGM pseudo samples, the frozen teacher, and a tiny-budget run."""
import json
from types import SimpleNamespace

import pytest
import torch

import moincl as M
from conftest import crash_and_resume, run_script, same_results, tiny_mllm
from common import add_lora, make_optimizer
from data.load import Sample, Task


def _tiny_model():
    words = ["describe", "the", "image", "audio", ".", "answer", ":", "red", "blue", "what", "colour", "?", "repeat", "cat"]
    return tiny_mllm(words, {"image": 8, "audio": 8})


ARGS = SimpleNamespace(lora_r=4, lora_alpha=8, lr=1e-2, device="cpu", seed=0, eval_batch_size=8, pseudo_per_batch=2,
                       kd_weight=1.0, kd_temperature=5.0, ikd_weight=1.0)


def _tasks():
    torch.manual_seed(1)
    img = lambda i, instr, tgt, ans: Sample(f"i{i}", "image", instr, tgt, ans, f"/m/i{i}.png", torch.randn(3, 8), "x")
    aud = lambda i, instr, tgt, ans: Sample(f"a{i}", "audio", instr, tgt, ans, f"/m/a{i}.wav", torch.randn(3, 8), "x")
    image_cap = Task("image-cap", [img(i, "describe the image.", "red", None) for i in range(4)], [])
    audio_qa = Task("audio-qa", [aud(i, "what colour ?", "blue", ["blue"]) for i in range(4)], [])
    image_qa = Task("image-qa", [img(10 + i, "what colour ?", "red", ["red"]) for i in range(4)], [])
    audio_cap = Task("audio-cap", [aud(10 + i, "describe the audio.", "blue", None) for i in range(4)], [])
    text = [Sample(f"t{i}", "text", "repeat : cat", "cat", ["cat"]) for i in range(3)]
    return [image_cap, audio_qa, image_qa, audio_cap], text


def test_kd_loss_zero_iff_student_equals_teacher():
    torch.manual_seed(0)
    z = torch.randn(10, 50)
    assert M.kd_loss(z, z.clone(), T=5.0).item() == pytest.approx(0.0, abs=1e-6)
    assert M.kd_loss(z + torch.randn(10, 50), z, T=5.0).item() > 0
    s, t, T = torch.randn(3, 7), torch.randn(3, 7), 5.0        # T^2 KL(teacher || student), by hand
    pt, ps = (t / T).softmax(-1), (s / T).softmax(-1)
    assert M.kd_loss(s, t, T).item() == pytest.approx((T * T * (pt * (pt.log() - ps.log())).sum(-1).mean()).item(), rel=1e-5)


def test_model_level_kd_terms_vanish_for_an_unchanged_student():
    model = _tiny_model()
    add_lora(model, ARGS)
    torch.nn.init.normal_(next(p for n, p in model.named_parameters() if "lora_B" in n))   # LoRA != identity
    teacher = M.frozen_teacher(model)
    tasks, text = _tasks()
    pseudo = [M.dataclasses.replace(s, target="red blue", _ids=None) for s in tasks[1].train[:2]]
    b = model.collate(tasks[1].train + pseudo)
    logits = model(b)
    assert M.ptgm_kd(logits, b, teacher, pseudo, 5.0).item() == pytest.approx(0.0, abs=1e-5)
    assert M.ikd_loss(model, teacher, text, 5.0).item() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        model.projectors["audio"][1].weight.add_(1.0)
        next(p for n, p in model.named_parameters() if "lora_A" in n).add_(0.5)
    assert M.ptgm_kd(model(b), b, teacher, pseudo, 5.0).item() > 1e-4
    assert M.ikd_loss(model, teacher, text, 5.0).item() > 1e-4


def test_ikd_distils_every_non_padding_position_and_nothing_else():
    model = _tiny_model()
    add_lora(model, ARGS)
    torch.nn.init.normal_(next(p for n, p in model.named_parameters() if "lora_B" in n))
    teacher = M.frozen_teacher(model)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_A" in n).add_(0.5)            # student != teacher
    texts = [Sample("t0", "text", "repeat : cat", "cat", ["cat"]),                          # different lengths:
             Sample("t1", "text", "repeat : cat cat cat", "cat cat cat", ["cat cat cat"])]   # the batch is padded
    T, rows = 5.0, []
    with torch.no_grad():
        for s in texts:                                    # each sequence alone: no padding, every position counts
            b = model.collate([s])
            lt, ls = (teacher(b, keep="all")[0, :-1] / T).log_softmax(-1), (model(b, keep="all")[0, :-1] / T).log_softmax(-1)
            rows.append((lt.exp() * (lt - ls)).sum(-1))
        got = M.ikd_loss(model, teacher, texts, T).item()
    assert got == pytest.approx(T * T * torch.cat(rows).mean().item(), rel=1e-3)   # with padding rows: ~20 % off


def test_pseudo_samples_use_current_media_and_earlier_type_instruction():
    model = _tiny_model()
    add_lora(model, ARGS)
    tasks, _ = _tasks()
    assert M.make_pseudo(model, tasks, 0, ARGS) == {}                  # nothing learned before task 1
    pool = M.make_pseudo(model, tasks, 2, ARGS)                         # image-qa after cap + qa: captions only
    assert set(pool) == {"cap"} and all(p.instruction == "describe the image." for p in pool["cap"].values())
    # task 2 audio-qa after image-cap: pseudo captions of the audio clips, "describe the audio."
    pool = M.make_pseudo(model, tasks, 1, ARGS)
    assert set(pool) == {"cap"} and set(pool["cap"]) == {s.id for s in tasks[1].train}
    caps = pool["cap"]
    for s in tasks[1].train:
        p = caps[s.id]
        assert p.instruction == "describe the audio." and p.answers is None
        assert p.media == s.media and p.feat is s.feat and p.modality == "audio"
        assert p.id != s.id and s.instruction == "what colour ?"        # the current sample is left as it was
    teacher_says = model.generate([caps[s.id] for s in tasks[1].train])
    assert [caps[s.id].target for s in tasks[1].train] == teacher_says   # targets come from the teacher
    # ... and so do the tokens the student is trained on (labels = teacher's words + </s>)
    b = model.collate([caps[s.id] for s in tasks[1].train])
    for row, said in zip(b.labels, teacher_says):
        assert model.tok.decode(row[row != -100][:-1].tolist()).strip() == said.strip()
    # task 4 audio-cap after image-cap, audio-qa, image-qa: pseudo QA with the audio question bank
    pool = M.make_pseudo(model, tasks, 3, ARGS)
    assert set(pool) == {"qa"}
    for s in tasks[3].train:
        p = pool["qa"][s.id]
        assert p.instruction == "what colour ?" and p.answers == [p.target] and p.feat is s.feat
    assert M.question_bank(tasks, 3, "audio") == ["what colour ?"]
    # a batch gets pseudo QA made from its own first k samples, pseudo captions from its last k (official)
    batch = tasks[3].train[1:]
    assert [p.media for p in M.pseudo_for(batch, pool, 2)] == [s.media for s in batch[:2]]
    batch = tasks[1].train[1:]
    assert [p.id for p in M.pseudo_for(batch, {"cap": caps}, 2)] == [caps[s.id].id for s in batch[-2:]]
    assert M.pseudo_for(batch, {"cap": caps}, 0) == [] and M.pseudo_for(batch, {}, 2) == []


def test_teacher_frozen_and_bit_identical_after_student_step():
    model = _tiny_model()
    add_lora(model, ARGS)
    tasks, text = _tasks()
    teacher = M.frozen_teacher(model)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.state_dict().items()}
    pool = M.make_pseudo(teacher, tasks, 1, ARGS)
    opt = make_optimizer(model, ARGS)
    terms = M.train_step(model, teacher, opt, tasks[1].train, pool, text, ARGS)
    assert set(terms) == {"ce", "kd", "ikd"}
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in student_before.items())   # the student moved
    # LoRA fusion with a = 0 resets the LoRA weights to the teacher's; a = 1 leaves the student unchanged
    lora = lambda m: {n: p.clone() for n, p in m.named_parameters() if "lora_" in n}
    now = lora(model)
    M.lora_fusion(model, teacher, 1.0)
    assert all(torch.equal(v, lora(model)[n]) for n, v in now.items())
    M.lora_fusion(model, teacher, 0.0)
    assert all(torch.equal(v, lora(teacher)[n]) for n, v in lora(model).items())


def test_lora_fusion_interpolates_the_lora_weights_only():
    """theta = (1 - a) theta_{t-1} + a theta on every LoRA tensor; projectors and the frozen LLM untouched."""
    model = _tiny_model()
    add_lora(model, ARGS)
    teacher = M.frozen_teacher(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))                                     # the student moved away from f_{t-1}
    old, new = dict(teacher.named_parameters()), {n: p.clone() for n, p in model.named_parameters()}
    M.lora_fusion(model, teacher, 0.8)
    fused = dict(model.named_parameters())
    lora = [n for n in new if "lora_" in n]
    assert lora and any(fused[n].requires_grad and "lora_" not in n for n in fused)   # projectors are trainable too
    for n, p in fused.items():
        want = 0.2 * old[n] + 0.8 * new[n] if n in lora else new[n]
        assert torch.allclose(p, want, atol=1e-6), n


@pytest.mark.parametrize("flags,calls", [([], 2), (["--no-lora-fusion"], 0)])
def test_lora_fusion_runs_after_every_epoch_from_the_second_task(monkeypatch, tmp_path, flags, calls):
    seen = []
    monkeypatch.setattr(M, "lora_fusion", lambda model, teacher, a: seen.append(a))
    run_script("moincl.py", tmp_path / "r", "--tasks", "image-cap,image-qa", "--train-limit", "16", "--test-limit", "1",
               "--epochs", "2", "--no-ikd", "--no-ptgm", *flags)               # 2 epochs of one step each per task
    assert seen == [M.FUSION] * calls


SMOKE = ["--train-limit", "16", "--test-limit", "8", "--epochs", "1", "--batch-size", "8"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("moincl") / "run"
    return out, run_script("moincl.py", out, *SMOKE, process=True)   # the script as a user runs it


def test_smoke_run(smoke):
    out, r = smoke
    res = json.loads((out / "results.json").read_text())
    assert res["method"] == "moincl"
    assert len(res["R"]) == 6 and all(len(row) == 6 for row in res["R"])
    assert "text_retention" in res["metrics"]
    assert "pseudo ['qa']" in r.stdout and "pseudo ['cap']" in r.stdout     # order 1 uses both pseudo types


def test_resume_after_a_crash_gives_same_results(smoke, tmp_path):
    """The teacher of the next task is the resumed checkpoint: same pseudo targets, same final results."""
    crash_and_resume("moincl.py", tmp_path / "crashed", *SMOKE)
    assert same_results(smoke[0], tmp_path / "crashed")


@pytest.mark.parametrize("flags,name", [([], "moincl"), (["--no-ptgm"], "moincl-noptgm"),
                                        (["--no-ikd"], "moincl-noikd"), (["--no-lora-fusion"], "moincl-nofusion"),
                                        (["--lora-fusion", "0.5"], "moincl-fusion0.5"),
                                        (["--lora-fusion", "0.8"], "moincl")])
def test_ablation_run_names(flags, name):
    """Each setting writes its own run folder, so an ablation never resumes into (or overwrites) the default run."""
    args = M.get_args(flags)
    assert args.run_name == name and args.output_dir.startswith(f"runs/{name}__micl")
