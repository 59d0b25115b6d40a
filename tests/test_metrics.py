"""Metrics against hand-computed values (SPEC 4)."""
import math

import pytest

from common import brg_steps, cl_metrics
from data.score import cider_d, exact_score, normalize_answer, score_predictions
from data.load import Sample


def test_cider_d_hand_computed():
    # Two samples, N = 2 -> every n-gram seen in exactly one reference set has idf = ln 2 - ln 1 = ln 2.
    # Sample 1: "a b" == its reference: cosine 1 for n = 1, 2 and no 3/4-grams -> (1 + 1 + 0 + 0) / 4 = 0.5.
    # Sample 2: "c d" vs "c e": unigram vectors (c, d) . (c, e) share c -> ln2^2 / (sqrt2 ln2)^2 = 0.5; bigrams 0.
    #           -> (0.5 + 0 + 0 + 0) / 4 = 0.125.   CIDEr-D = 10 x that, reported x 10 -> 50 and 12.5.
    s = cider_d(["a b", "c d"], [["a b"], ["c e"]])
    assert s == pytest.approx([50.0, 12.5])


def test_cider_d_length_penalty_and_idf():
    # Same words, one extra word: unigram/bigram overlap shrinks and the Gaussian length penalty exp(-1/72) applies.
    s = cider_d(["a b", "c e f"], [["a b"], ["c e"]])
    # sample 2: unigrams cand (c, e, f) all idf ln2 -> dot = 2 ln2^2, norms sqrt3 ln2 * sqrt2 ln2 -> 2/sqrt6
    #           bigrams cand (c e, e f) vs ref (c e): 1/sqrt2 ; penalty exp(-(3-2)^2 / 72)
    expect = 100 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert s[1] == pytest.approx(expect)
    # An n-gram that occurs in every reference set has idf 0: a single-sample set always scores 0.
    assert cider_d(["a b c d"], [["a b c d"]]) == [0.0]


def test_qa_normalisation():
    assert normalize_answer("The Two!") == "2"
    assert exact_score("two", ["2"]) == 100.0
    assert exact_score("a red", ["red"]) == 100.0
    assert exact_score("blue", ["red"]) == 0.0
    assert exact_score("Left.", ["left"]) == 100.0


def test_score_predictions_mixes_qa_and_captions():
    qa = Sample("1", "image", "q", "red", answers=["red"])
    cap1 = Sample("2", "image", "d", "a b")
    cap2 = Sample("3", "image", "d", "c e")
    # QA right (100) + captions 50 and 12.5 (as above) -> mean 54.1667
    assert score_predictions([qa, cap1, cap2], ["red", "a b", "c d"]) == pytest.approx((100 + 50 + 12.5) / 3)


def test_multi_reference_captions():
    # "a b" matches one of two references of sample 1 -> half of the single-reference score (mean over references)
    one = Sample("1", "image", "d", "a b", references=["a b", "x y"])
    two = Sample("2", "image", "d", "c e")
    assert score_predictions([one, two], ["a b", "c d"])  == pytest.approx(
        sum(cider_d(["a b", "c d"], [["a b", "x y"], ["c e"]])) / 2)
    assert cider_d(["a b", "c d"], [["a b", "x y"], ["c e"]])[0] < 50.0


def test_cl_metrics_hand_computed():
    R = [[80, 10, 0], [60, 90, 5], [40, 70, 85]]
    m = cl_metrics(R)
    assert m["last"] == pytest.approx(65.0)                       # (40 + 70 + 85) / 3
    assert m["maa"] == pytest.approx((80 + 75 + 65) / 3)          # row means over seen tasks
    assert m["mft"] == pytest.approx(85.0)                        # (80 + 90 + 85) / 3
    assert m["bwt"] == pytest.approx(-30.0)                       # ((40-80) + (70-90)) / 2
    assert m["forgetting"] == pytest.approx(30.0)                 # ((80-40) + (90-70)) / 2
    assert m["brg"] == pytest.approx(100 * (40 / 80 + 70 / 90) / 2)
    # BRG after every step: step 2 keeps 60 / 80 of task 1, step 3 is the final BRG; their mean
    assert brg_steps(R) == pytest.approx([75.0, 100 * (40 / 80 + 70 / 90) / 2])
    assert m["brg_mean"] == pytest.approx((75.0 + 100 * (40 / 80 + 70 / 90) / 2) / 2)


def test_cl_metrics_single_joint_row():
    assert cl_metrics([[50, 70]]) == {"last": 60.0}


def test_cosine_schedule_follows_the_formula_and_constant_leaves_lr_alone():
    import math
    from types import SimpleNamespace
    import torch
    from common import batches
    args = SimpleNamespace(seed=0, batch_size=2, max_steps=None, epochs=2, lr_schedule="cosine")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    lrs = [opt.param_groups[0]["lr"] for _ in batches(list(range(5)), args, 0, opt=opt)]   # 3 steps x 2 epochs
    assert lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 6)) / 2 for k in range(6)])
    args.lr_schedule, opt.param_groups[0]["lr"] = "constant", 0.5
    assert [opt.param_groups[0]["lr"] for _ in batches(list(range(5)), args, 0, opt=opt)] == [0.5] * 6
