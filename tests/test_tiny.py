"""The shipped tiny base (data/tiny_base) is the one the builder would build for the 600-step default: same key,
loadable, the builder's vocabulary and architectures; build_tiny() uses it only for that key, and tests (which
build their own 30-step base) cannot write into it. data/base.py finds it, or has the builder build it."""
import os
import subprocess

import pytest

from data import base, tiny
from data.files import UserError
from data.generate import vocabulary

STALE = "data/tiny_base is not what the builder would build now: rebuild it with `python -m data.tiny --rebuild`"


def shipped(part):
    return os.path.join(base.SHIPPED, part)


def test_shipped_key_is_the_builders_key_for_the_default():
    """Fails whenever the vocabulary, the text corpus, the steps / batch, the encoders' corpus, an architecture or
    BUILD_REVISION changed without a rebuild (independent of MLLM_CL_TINY_STEPS)."""
    with open(shipped("KEY")) as f:
        shipped_key = f.read().strip()
    assert shipped_key == base.recipe_key(base.DEFAULT_STEPS) == base.build_key(steps=base.DEFAULT_STEPS), STALE


def test_shipped_parts_load_with_the_builders_vocabulary_and_configs():
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoModel

    import data.load
    llm, tok = data.load.load_llm(shipped("llm"), "cpu")
    assert tok.get_vocab() == tiny._build_tokenizer(vocabulary()).get_vocab(), STALE
    assert llm.config.vocab_size == len(tok)
    image, audio = AutoModel.from_pretrained(shipped("image")), AutoModel.from_pretrained(shipped("audio"))
    for model, cfg in ((llm, base.LLM_CONFIG), (image, base.VIT_CONFIG), (audio, base.AST_CONFIG)):
        assert {k: getattr(model.config, k) for k in cfg} == cfg, STALE
    assert AutoImageProcessor.from_pretrained(shipped("image")).size == base.VIT_PROCESSOR["size"]
    fe = AutoFeatureExtractor.from_pretrained(shipped("audio"))
    assert {k: getattr(fe, k) for k in base.AST_FEATURES} == base.AST_FEATURES


def test_build_tiny_uses_the_shipped_base_only_for_its_key(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(tiny, "_build", lambda root, steps, variant="default": (built.append((root, steps)),
                                                                                   os.makedirs(root, exist_ok=True)))
    key = base.build_key(steps=base.DEFAULT_STEPS)
    monkeypatch.setattr(base, "PRETRAIN_STEPS", base.DEFAULT_STEPS)
    paths = tiny.build_tiny(cache=str(tmp_path))
    assert paths == {"llm": shipped("llm"), "image": shipped("image"), "audio": shipped("audio"), "name": f"tiny-{key}"}
    assert not built and not os.listdir(tmp_path), "the shipped base needs no build"
    monkeypatch.setattr(base, "PRETRAIN_STEPS", 30)
    paths = tiny.build_tiny(cache=str(tmp_path))
    other = base.build_key(steps=30)
    assert other != key and built == [(str(tmp_path / f"tiny-{other}"), 30)]
    assert paths["llm"] == str(tmp_path / f"tiny-{other}" / "llm") and paths["name"] == f"tiny-{other}"
    tiny.build_tiny(cache=str(tmp_path))
    assert len(built) == 1, "a finished cache/ build is reused"


def test_build_tiny_waits_for_a_build_in_progress(tmp_path, monkeypatch):
    """Two runs that need the same cache/ base at once: the second waits on the folder's lock for the first's DONE
    and then uses it, instead of pretraining a second copy into the same folder."""
    import fcntl
    import threading
    built = []
    monkeypatch.setattr(tiny, "_build", lambda root, steps, variant="default": (built.append(root),
                                                                                   os.makedirs(root, exist_ok=True)))
    monkeypatch.setattr(base, "PRETRAIN_STEPS", 30)
    root = tmp_path / f"tiny-{base.build_key(steps=30)}"
    root.mkdir()
    holder = open(root / ".lock", "a")                # a separate open file: flock conflicts as with another process
    fcntl.flock(holder, fcntl.LOCK_EX)
    th = threading.Thread(target=tiny.build_tiny, kwargs={"cache": str(tmp_path)})
    th.start()
    th.join(1.0)
    assert th.is_alive() and not built                # waiting for the lock
    (root / "DONE").write_text("")                    # the other process finishes its build, then its lock goes
    holder.close()
    th.join(30)
    assert not th.is_alive() and not built, "the finished build is used, not built again"


def test_rebuild_refuses_a_test_budget(tmp_path):
    """Only the 600-step default may be written as the shipped base (the tests run with MLLM_CL_TINY_STEPS=30)."""
    assert base.PRETRAIN_STEPS != base.DEFAULT_STEPS
    with pytest.raises(SystemExit, match="MLLM_CL_TINY_STEPS"):
        tiny.rebuild(str(tmp_path / "base"))
    assert not os.listdir(tmp_path)


def test_key_cache_is_named_by_the_code_it_is_drawn_from(tmp_path, monkeypatch):
    """build_key is read from cache/keys/ only under the hash of this code: editing data/generate.py (or the steps)
    names another entry, so a stale key is never read."""
    import data.generate
    monkeypatch.setattr(base, "CACHE", str(tmp_path))
    keys = tmp_path / "keys"
    base._key.cache_clear()
    try:
        key = base.build_key(steps=30)
        assert key == base.recipe_key(30) and [p.read_text() for p in keys.iterdir()] == [key]
        base._key.cache_clear()
        assert base.build_key(steps=30) == key and len(os.listdir(keys)) == 1          # read back, not redrawn
        edited = tmp_path / "generate.py"
        edited.write_bytes(open(data.generate.__file__, "rb").read() + b"\n# edited\n")
        monkeypatch.setattr(data.generate, "__file__", str(edited))
        base._key.cache_clear()
        assert base.build_key(steps=30) == key and len(os.listdir(keys)) == 2          # a new entry for new code
    finally:
        base._key.cache_clear()


def test_tiny_base_has_the_builder_build_a_missing_base_as_a_process(tmp_path, monkeypatch):
    """common.py's way to a base: the shipped one as it is; a missing one built by `python -m data.tiny --build` in a
    process of its own (the builder imports common.py, so common.py cannot import it), with the cache it was given;
    a failed build is one error line."""
    calls = []

    def fake_run(cmd, cwd, env):
        calls.append((cmd[1:], env["MLLM_CL_CACHE"]))
        os.makedirs(os.path.join(env["MLLM_CL_CACHE"], f"tiny-{base.build_key()}"), exist_ok=True)
        return subprocess.CompletedProcess(cmd, 1)
    monkeypatch.setattr(base.subprocess, "run", fake_run)
    monkeypatch.setattr(base, "PRETRAIN_STEPS", base.DEFAULT_STEPS)
    assert base.tiny_base(str(tmp_path))["llm"] == os.path.join(base.SHIPPED, "llm") and not calls
    monkeypatch.setattr(base, "PRETRAIN_STEPS", 30)
    with pytest.raises(UserError, match=r"could not be built into .*`python -m data.tiny --build` exited with status 1"):
        base.tiny_base(str(tmp_path))
    assert calls == [(["-m", "data.tiny", "--build"], str(tmp_path))]
    (tmp_path / f"tiny-{base.build_key()}" / "DONE").write_text("")        # a finished build: no second process
    assert base.tiny_base(str(tmp_path))["name"] == f"tiny-{base.build_key()}" and len(calls) == 1


def test_acl_base_is_its_own_variant_and_shipped_with_its_key():
    """The acl base (data/tiny_base_acl): the default's vocabulary and corpus plus acl's, a 64 px ViT with the same
    8 x 8 token grid, the default's audio encoder; its own key, so the default base (and every other scenario's
    result) is untouched by it. Fails when data/tiny_base_acl is stale."""
    from data import acl
    assert base.variant_of(["acl-ocr", "acl-gui"]) == "acl" and base.variant_of(["image-cap", "dcl-rs"]) == "default"
    voc = base.vocabulary("acl")
    assert set(vocabulary()) < set(voc) and set(acl.acl_vocabulary()) <= set(voc)
    assert base.text_corpus("acl")[:len(base.text_corpus())] == base.text_corpus()
    assert base.build_key(variant="acl") != base.build_key()
    with open(os.path.join(base.SHIPPED_ACL, "KEY")) as f:
        assert f.read().strip() == base.recipe_key(base.DEFAULT_STEPS, "acl"), \
            "data/tiny_base_acl is stale: python -m data.tiny --rebuild --variant acl"
    cfg, proc = base.vit("acl")
    assert cfg["image_size"] // cfg["patch_size"] == base.VIT_CONFIG["image_size"] // base.VIT_CONFIG["patch_size"]
    from transformers import AutoModel
    assert AutoModel.from_pretrained(os.path.join(base.SHIPPED_ACL, "image")).config.image_size == 64
    llm_tok = __import__("data.load", fromlist=["load_llm"]).load_llm(os.path.join(base.SHIPPED_ACL, "llm"), "cpu")[1]
    assert llm_tok.get_vocab() == tiny._build_tokenizer(voc).get_vocab()


def test_acl_base_borrows_the_default_audio_encoder(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(tiny, "_build", lambda root, steps, variant="default": (built.append((os.path.basename(root),
                                                                                              variant)),
                                                                                 os.makedirs(root, exist_ok=True)))
    monkeypatch.setattr(base, "PRETRAIN_STEPS", 30)
    paths = tiny.build_tiny(cache=str(tmp_path), variant="acl")
    default = tiny.build_tiny(cache=str(tmp_path))
    assert paths["audio"] == default["audio"] and paths["llm"] != default["llm"]
    assert paths["name"] == f"tiny-acl-{base.build_key(steps=30, variant='acl')}"
    assert sorted(v for _, v in built) == ["acl", "default"]
