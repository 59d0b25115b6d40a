"""Baselines: properties of each method's loss (EWC, O-LoRA, LwF), the replay buffer size, MoELoRA's gated experts,
and a tiny-budget run."""
import copy
import json
from types import SimpleNamespace

import pytest
import torch

from baselines import GatedA, add_moe_experts, draw_buffer, ewc_penalty, kd_loss, orthogonality_loss
from common import add_lora, lora_layers
from data.load import Sample
from conftest import crash_and_resume, run_script, same_results, tiny_mllm


def test_ewc_penalty_zero_at_anchor_and_quadratic():
    torch.manual_seed(0)
    anchor = {"a": torch.randn(4, 3), "b": torch.randn(5)}
    fisher = {"a": torch.rand(4, 3), "b": torch.rand(5)}
    d = {n: torch.randn_like(v) for n, v in anchor.items()}
    at = lambda s: ewc_penalty({n: anchor[n] + s * d[n] for n in anchor}, fisher, anchor, lam=400.0)
    assert at(0.0).item() == 0.0
    p1, p2 = at(1.0).item(), at(2.0).item()
    assert p1 > 0 and p2 == pytest.approx(4 * p1, rel=1e-5)
    # (lambda / 2) sum F (theta - theta*)^2 by hand: F = 1, displacement 3, lambda = 2 -> 9 per entry
    one, zero = {"a": torch.ones(2, 2)}, {"a": torch.zeros(2, 2)}
    assert ewc_penalty({"a": torch.full((2, 2), 3.0)}, one, zero, 2.0).item() == 36.0
    # a parameter with zero Fisher is free to move
    assert ewc_penalty({"a": anchor["a"] + 1}, {"a": torch.zeros(4, 3)}, anchor, 400.0).item() == 0.0
    # lambda scales linearly
    p_800 = ewc_penalty({n: anchor[n] + d[n] for n in anchor}, fisher, anchor, 800.0).item()
    assert p_800 == pytest.approx(2 * p1, rel=1e-5)


def test_olora_orthogonality_zero_for_orthogonal_subspaces_positive_otherwise():
    q, _ = torch.linalg.qr(torch.randn(32, 32))       # orthonormal columns
    rows = q.T                                         # (32, 32) orthonormal rows
    a_old, a_new = rows[:8], rows[8:16]                # (r=8, d_in=32) each, disjoint row spaces
    assert orthogonality_loss(a_new, [a_old]).item() == pytest.approx(0.0, abs=1e-5)
    assert orthogonality_loss(a_new, [a_old, rows[16:24]]).item() == pytest.approx(0.0, abs=1e-5)
    overlap = torch.cat([rows[:4], rows[8:12]])        # shares 4 directions with a_old
    assert orthogonality_loss(overlap, [a_old]).item() == pytest.approx(4.0, abs=1e-4)   # |I_4| entries
    assert orthogonality_loss(torch.randn(8, 32), [a_old]).item() > 0.1


def test_lwf_loss_zero_when_student_equals_teacher():
    torch.manual_seed(0)
    z = torch.randn(10, 50)
    assert kd_loss(z, z.clone(), T=2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(z + torch.randn(10, 50), z, T=2.0).item() > 0
    # T^2 KL(teacher || student): matches the definition computed by hand
    s, t, T = torch.randn(3, 7), torch.randn(3, 7), 2.0
    pt, ps = (t / T).softmax(-1), (s / T).softmax(-1)
    by_hand = T * T * (pt * (pt.log() - ps.log())).sum(-1).mean()
    assert kd_loss(s, t, T).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_replay_buffer_is_two_percent_per_task():
    idx = draw_buffer(320, 0.02, seed=0)
    assert len(idx) == 6 and len(set(idx)) == 6 and all(0 <= i < 320 for i in idx)   # round(6.4)
    assert len(draw_buffer(1000, 0.02, seed=0)) == 20
    assert len(draw_buffer(10, 0.02, seed=0)) == 1                                    # never empty
    assert draw_buffer(320, 0.02, seed=0) == idx and draw_buffer(320, 0.02, seed=1) != idx   # seeded


# ---------------------------------------------------------------------------------------------- MoELoRA
def _lora_model(r=4):
    """A tiny MLLM with one peft LoRA of rank r whose B is random (a fresh LoRA's B = 0 would make every test pass)."""
    model = tiny_mllm(["describe", "the", "image", ".", "answer", ":", "red", "blue"], {"image": 8})
    add_lora(model, SimpleNamespace(lora_r=r, lora_alpha=2 * r))
    torch.manual_seed(1)
    for m in lora_layers(model.llm).values():
        torch.nn.init.normal_(m.lora_B["default"].weight, std=0.5)
    batch = model.collate([Sample(str(i), "image", "describe the image.", "red", None, None, torch.randn(3, 8))
                           for i in range(3)])
    return model, batch


def test_moelora_with_one_expert_is_plain_lora():
    """E = 1: the gate is softmax of one logit = 1, so MoELoRA computes exactly the LoRA of the same rank."""
    lora, batch = _lora_model()
    moe = copy.deepcopy(lora)                                          # the same A / B weights
    add_moe_experts(moe.llm, 1)
    assert all(isinstance(m.lora_A["default"], GatedA) for m in lora_layers(moe.llm).values())
    with torch.no_grad():
        assert torch.allclose(moe(batch), lora(batch), atol=1e-6)
        assert not torch.allclose(lora(batch), tiny_mllm(["describe", "the", "image", ".", "answer", ":", "red",
                                                            "blue"], {"image": 8})(batch), atol=1e-3)   # LoRA acts


def test_moelora_output_is_the_gated_sum_of_its_experts():
    """h = W0 x + scaling sum_e g_e(x) B_e A_e x, per token, with expert e = rows e*r/E.. of A and columns of B; a zero
    gate (g = 1/E) is the LoRA scaled by 1/E."""
    lora, batch = _lora_model(r=4)
    m = next(iter(lora_layers(lora.llm).values()))
    base, a, b, s = m.base_layer, m.lora_A["default"], m.lora_B["default"], m.scaling["default"]
    gated = GatedA(a, 2)
    torch.nn.init.normal_(gated.gate.weight, std=1.0)
    m.lora_A["default"] = gated
    x = torch.randn(2, 5, a.in_features)
    g = torch.softmax(x @ gated.gate.weight.T, -1)                              # (2, 5, E)
    by_hand = base(x) + s * sum(g[..., e:e + 1] * (x @ a.weight[2 * e:2 * e + 2].T @ b.weight[:, 2 * e:2 * e + 2].T)
                                for e in range(2))
    with torch.no_grad():
        assert torch.allclose(m(x), by_hand, atol=1e-5)
        assert g[0, 0, 0] != g[0, 1, 0]                                        # token-level: the gate varies by token
        gated.gate.weight.zero_()
        assert torch.allclose(m(x), base(x) + s / 2 * (x @ a.weight.T @ b.weight.T), atol=1e-5)


def test_moelora_gate_sums_to_one():
    torch.manual_seed(0)
    gated = GatedA(torch.nn.Linear(16, 8, bias=False), 4)
    g = gated.gates(torch.randn(3, 7, 16) * 10)
    assert g.shape == (3, 7, 4) and bool((g >= 0).all())
    assert torch.allclose(g.sum(-1), torch.ones(3, 7), atol=1e-6)


SMOKE = ["--tasks", "audio-cap,image-cap,video-qa", "--train-limit", "16", "--test-limit", "8", "--epochs", "1",
         "--batch-size", "8"]                                          # three modalities, both task types


@pytest.fixture(scope="module", params=["ewc", "olora", "moelora"])
def smoke(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "run"
    run_script("baselines.py", out, "--method", request.param, *SMOKE)
    return request.param, out


def test_baseline_smoke(smoke):
    method, out = smoke
    res = json.loads((out / "results.json").read_text())
    assert len(res["R"]) == 3 and all(len(row) == 3 for row in res["R"])
    assert "bwt" in res["metrics"] and "text_retention" in res["metrics"]
    if method == "olora":   # one adapter per task saved
        lora = out / "checkpoints" / "task2_video-qa" / "lora"
        assert all((lora / f"task{t}").is_dir() for t in range(3))
    if method == "moelora":  # the gates are part of the saved adapter, and they trained
        from safetensors.torch import load_file
        saved = load_file(str(out / "checkpoints" / "task2_video-qa" / "lora" / "adapter_model.safetensors"))
        gates = [k for k in saved if "lora_A" in k and k.endswith(".gate.weight")]
        assert len(gates) == 3 * 7 and all(saved[k].shape[0] == 4 for k in gates)     # 3 layers x 7 targets, E = 4
        assert res["args"]["moe_experts"] == 4


@pytest.mark.parametrize("smoke", ["ewc", "moelora"], indirect=True)   # (O-LoRA's adapters resume as MR-LoRA's do)
def test_baseline_resume_after_a_crash(smoke, tmp_path):
    """EWC's accumulated Fisher and anchor, MoELoRA's gates survive a crash: same final results."""
    method, out = smoke
    crash_and_resume("baselines.py", tmp_path / "crashed", "--method", method, *SMOKE)
    assert same_results(out, tmp_path / "crashed")
