"""Baselines: properties of each method's loss (EWC, O-LoRA, LwF), the replay buffer size, and a tiny-budget run."""
import json

import pytest
import torch

from baselines import draw_buffer, ewc_penalty, kd_loss, orthogonality_loss
from conftest import kill_and_resume, run_script, same_results


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


SMOKE = ["--train-limit", "16", "--test-limit", "8", "--epochs", "1"]


@pytest.fixture(scope="module", params=["ewc", "olora"])
def smoke(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "run"
    run_script("baselines.py", out, "--method", request.param, *SMOKE)
    return request.param, out


def test_baseline_smoke(smoke):
    method, out = smoke
    res = json.loads((out / "results.json").read_text())
    assert len(res["R"]) == 6 and all(len(row) == 6 for row in res["R"])
    assert "bwt" in res["metrics"] and "text_retention" in res["metrics"]
    if method == "olora":   # one adapter per task saved
        lora = out / "checkpoints" / "task5_video-cap" / "lora"
        assert all((lora / f"task{t}").is_dir() for t in range(6))


@pytest.mark.parametrize("smoke", ["ewc"], indirect=True)       # (O-LoRA's adapters resume as MR-LoRA's experts do)
def test_baseline_resume_after_kill(smoke, tmp_path):
    """EWC's accumulated Fisher and anchor survive a crash: same final results."""
    method, out = smoke
    kill_and_resume("baselines.py", tmp_path / "killed", "--method", method, *SMOKE)
    assert same_results(out, tmp_path / "killed")
