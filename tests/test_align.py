"""Stage 1 (tools/align.py) and --projectors: aligned projectors are written with the record of the models they
were aligned for, load into every script's MLLM, are refused for other models in one line; --projector-lr."""
import json
import os
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import baselines
import common
from conftest import run_script
from data import base
from data.files import UserError

sys.path.insert(0, os.path.join(common.ROOT, "tools"))
import align  # noqa: E402


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """The embedded default's aligned projectors for the tests' base, where --projectors aligned looks for them."""
    path = os.path.join(base.CACHE, f"aligned-{base.align_key()}.safetensors")
    if base._record_key(path) != base.align_key():
        align.main(["--tiny-base", "--out", path, "--output-dir", str(tmp_path_factory.mktemp("align-run"))])
    return path


def state(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["record"])


def test_aligned_projectors_load_into_the_model(aligned, tmp_path):
    weights, record = state(aligned)
    assert record["key"] == base.align_key() and record["llm"].startswith("tiny-")
    assert base.aligned_projectors() == aligned                      # found, nothing rebuilt
    args = baselines.get_args(["--projectors", "aligned", "--max-steps", "1", "--output-dir", str(tmp_path / "x")])
    model, _, _ = common.build_model(args)
    got = {f"{m}.{k}": v for m, p in model.projectors.items() for k, v in p.state_dict().items()}
    assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in got)
    scratch, _, _ = common.build_model(baselines.get_args(["--output-dir", str(tmp_path / "y")]))
    assert not torch.equal(scratch.projectors["image"][1].weight, got["image.1.weight"])
    assert args.fingerprint["projectors"] == "aligned"


def test_a_run_starts_from_them(aligned, tmp_path):
    r = run_script("baselines.py", tmp_path / "r", "--method", "finetune", "--projectors", aligned, "--tasks",
                   "image-cap,dcl-rs", "--max-steps", "1", "--test-limit", "4", "--projector-lr", "1e-4")
    assert r.returncode == 0
    res = json.load(open(tmp_path / "r" / "results.json"))
    assert res["fingerprint"]["projectors"] == aligned and res["args"]["projector_lr"] == 1e-4


def test_other_models_are_refused_in_one_line(aligned, tmp_path):
    weights, record = state(aligned)
    other = tmp_path / "other.safetensors"
    save_file(weights, str(other), metadata={"record": json.dumps(dict(record, llm="Qwen/Qwen2.5-0.5B"))})
    args = baselines.get_args(["--projectors", str(other), "--output-dir", str(tmp_path / "x")])
    with pytest.raises(UserError, match=r"aligned for other models \(file vs this run: \{'llm': \('Qwen"):
        common.build_model(args)
    for flags, msg in ((["--projectors", "aligned", "--llm", "Qwen/Qwen2.5-0.5B"], "only the embedded default ships"),
                       (["--projectors", str(tmp_path / "none.safetensors")], "expected scratch, aligned or a file")):
        with pytest.raises(UserError, match=msg):
            common.check_flags(baselines.get_args(flags + ["--output-dir", str(tmp_path / "z")]))
    (tmp_path / "junk.safetensors").write_text("junk")
    with pytest.raises(UserError, match="not a projector file of tools/align.py"):
        common.build_model(baselines.get_args(["--projectors", str(tmp_path / "junk.safetensors"),
                                                "--output-dir", str(tmp_path / "w")]))


def test_projector_lr_is_a_param_group():
    model = torch.nn.Module()
    model.projectors = torch.nn.ModuleDict({"image": torch.nn.Linear(2, 2)})
    model.lora = torch.nn.Linear(2, 2)
    args = baselines.get_args(["--lr", "1e-3", "--projector-lr", "1e-4"])
    opt = common.make_optimizer(model, args)
    assert [(g["lr"], len(g["params"])) for g in opt.param_groups] == [(1e-3, 2), (1e-4, 2)]
    args.projector_lr = None
    assert [g["lr"] for g in common.make_optimizer(model, args).param_groups] == [1e-3]


def test_shipped_aligned_projectors_match_their_builder():
    """data/tiny_base/aligned.safetensors is what `python tools/align.py --tiny-base` makes for the 600-step base."""
    assert base._record_key(base.SHIPPED_ALIGNED) == base.align_key(steps=base.DEFAULT_STEPS), \
        "stale: python tools/align.py --tiny-base --out data/tiny_base/aligned.safetensors (MLLM_CL_TINY_STEPS unset)"


def test_each_scenario_starts_where_its_paper_starts():
    """micl / dcl: scratch (MoInCL trains its projections from scratch; dcl: validation kept scratch, docs/defaults.md);
    mcl: aligned (MERA's pre-training stage); acl: aligned with the projector at a tenth of the LoRA lr (MLLM-CL);
    a real model: scratch (only the embedded default ships aligned projectors); explicit flags win."""
    p = lambda *a: common.parse_args(common.shared_parser("x", "x"), list(a))
    got = {s: (p("--scenario", s).projectors, p("--scenario", s).projector_lr) for s in ("micl", "dcl", "mcl", "acl")}
    assert got == {"micl": ("scratch", None), "dcl": ("scratch", None), "mcl": ("aligned", None), "acl": ("aligned", 1e-4)}
    assert p("--tasks", "image-cap").projectors == "scratch"
    assert (p("--scenario", "acl", "--llm", "some/model").projectors, p("--scenario", "acl", "--llm", "x").projector_lr) \
        == ("scratch", None)
    assert p("--scenario", "mcl", "--mllm", "some/llava").projectors == "scratch"      # LLaVA brings its projector
    a = p("--scenario", "acl", "--projectors", "scratch", "--projector-lr", "1e-3")
    assert (a.projectors, a.projector_lr) == ("scratch", 1e-3)


def test_mcl_sees_ten_times_the_samples_in_the_same_steps():
    """mcl: 3200 training samples a modality, 2 epochs (the optimiser steps of 320 x 20, so MERA's 10 % replay is
    320 samples); every other scenario 20 epochs; an explicit --epochs wins."""
    from data.generate import split_sizes
    p = lambda *a: common.parse_args(common.shared_parser("x", "x"), list(a))
    assert {s: p("--scenario", s).epochs for s in ("micl", "dcl", "mcl", "acl")} == \
        {"micl": 20, "dcl": 20, "mcl": 2, "acl": 20}
    assert p("--tasks", "image").epochs == 20 and p("--scenario", "mcl", "--epochs", "5").epochs == 5
    assert split_sizes("image")["train"] * p("--scenario", "mcl").epochs == \
        split_sizes("image-cap")["train"] * p("--scenario", "micl").epochs


def test_acl_runs_on_its_own_base_from_its_aligned_projectors(tmp_path):
    """--scenario acl: the acl base (64 px ViT, acl's vocabulary) and its aligned projectors, made on first use
    (for the tests' 30-step base: alignment on acl captions through tools/align.py); --test-split test_iid names
    the run apart."""
    r = run_script("baselines.py", tmp_path / "r", "--scenario", "acl", "--max-steps", "1", "--test-limit", "4",
                   "--train-limit", "8")
    res = json.load(open(tmp_path / "r" / "results.json"))
    assert res["fingerprint"]["llm"] == base.name("acl") and res["fingerprint"]["projectors"] == "aligned"
    assert res["args"]["projector_lr"] == 1e-4 and res["tasks"] == ["acl-ocr", "acl-math", "acl-vp", "acl-gui"]
    record = state(base.aligned_projectors(variant="acl"))[1]
    assert record["llm"] == base.name("acl") and record["enc_dims"]["image"] == res["fingerprint"]["enc_dims"]["image"]
    a = baselines.get_args(["--scenario", "acl", "--test-split", "test_iid"])
    assert a.output_dir.endswith("finetune-test_iid__acl__order1__seed0")
