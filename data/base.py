"""Where the embedded default's tiny base lies, and which base the current code asks for (its key).

The base every reported number uses ships in the repository, in data/tiny_base/{llm,image,audio}/ with its KEY:
tiny_base() returns it when KEY equals build_key() for the current settings. Otherwise (the tests'
MLLM_CL_TINY_STEPS=30, a changed vocabulary or corpus) the base of that key is built into cache/tiny-<key>/ once,
by the builder data/tiny.py, run as its own program: it trains through common.py's MLLM, and common.py stands on
this file, so importing the builder here would close an import circle.

The key covers what determines the build: BUILD_REVISION, the steps and batch, the whole text corpus, the
vocabulary, the encoders' corpus seed and size, the architectures' configs and the optimisers' settings. Bump
BUILD_REVISION for a change it cannot see (the training code, how data/generate.py renders the worlds), then
rebuild (`python -m data.tiny --rebuild`); tests/test_tiny.py fails while data/tiny_base/KEY is not the key of the
600-step default.
"""
import functools
import hashlib
import json
import os
import subprocess
import sys

import numpy as np

from data.files import CACHE, ROOT, UserError, atomic_write

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_base")
PARTS = ("llm", "image", "audio")
BUILD_REVISION = 1     # bump when the build changes in a way the key does not see (then: python -m data.tiny --rebuild)

# One-time pretraining budget of the tiny base: 600 steps (AST; 1.5x for the LLM and the ViT, part_steps). The tests
# set MLLM_CL_TINY_STEPS (e.g. 30) to build a throwaway base in seconds: they check plumbing, not accuracy.
DEFAULT_STEPS = 600
PRETRAIN_STEPS, PRETRAIN_BATCH = int(os.environ.get("MLLM_CL_TINY_STEPS", str(DEFAULT_STEPS))), 64
ENCODER_CORPUS_SEED = 987654

LLM_CONFIG = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True)
LLM_OPTIM = dict(lr=4e-3, weight_decay=0.01, pct_start=0.05)          # AdamW + one-cycle schedule
VIT_CONFIG = dict(image_size=40, patch_size=5, hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=192)
VIT_PROCESSOR = dict(size={"height": 40, "width": 40})
AST_CONFIG = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, patch_size=8,
                  frequency_stride=8, time_stride=8, max_length=64, num_mel_bins=32)
AST_FEATURES = dict(num_mel_bins=32, max_length=64, sampling_rate=16000)
ENCODER_LR = 2e-3

# The acl base (MLLM-CL's ability CL, data/acl.py), a variant kept apart so the other scenarios' base and results stay
# as they are: the same recipe with acl's words in the vocabulary and its questions in the text corpus, and a 64 px
# ViT (patch 8: the same 8 x 8 grid, 64 image tokens) pretrained on acl pictures of BOTH generators' styles (a real
# ViT has read text in many fonts; projectors and LoRA still train on the train generator only). Audio: the default's.
VARIANTS = ("default", "acl")
SHIPPED_ACL = os.path.join(os.path.dirname(SHIPPED), "tiny_base_acl")
# 4 layers x 128 wide, not the default's 2 x 96: reading glyphs in many fonts needs the depth (docs/gaps.md item 4).
ACL_VIT_CONFIG = dict(VIT_CONFIG, image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=4,
                      intermediate_size=256)
ACL_VIT_PROCESSOR = dict(size={"height": 64, "width": 64})
ACL_CORPUS_SEED = 987655
# The acl ViT reads fresh pictures every step, with warmup + cosine lr: a fixed corpus of a few thousand pictures is
# memorised, not read (held-out heads near chance after 900 steps, docs/gaps.md item 4). A throwaway test base
# (steps below the default) keeps 1.5x steps: it checks plumbing, not accuracy.
ACL_VIT_TRAIN = dict(steps=12000, lr=1e-3, warmup=300, patch_labels=True)


def variant_of(task_names):
    """The base a task sequence runs on: acl's for acl tasks, else the default."""
    return "acl" if any(t.startswith("acl-") for t in task_names) else "default"


def variant_parts(variant):
    """The parts a variant builds itself (the acl base borrows the default's audio encoder)."""
    return PARTS if variant == "default" else ("llm", "image")


def part_steps(steps=None, variant="default"):
    """Pretraining steps of each part: 1.5x for the LLM (at 600 it had not learned to copy, "repeat : dog" ->
    "key"; text-only accuracy 56.5 vs 93.5 at 900, measured on the text test split) and for the ViT (its corpus
    holds two worlds: shapes + dcl domain scenes); the acl base's ViT: ACL_VIT_TRAIN's steps."""
    steps = PRETRAIN_STEPS if steps is None else steps
    image = ACL_VIT_TRAIN["steps"] if variant == "acl" and steps >= DEFAULT_STEPS else steps * 3 // 2
    return {"llm": steps * 3 // 2, "image": image, "audio": steps}


def encoder_corpus_size(steps=None):
    """Items per world of the encoders' corpus: 2400 (a throwaway test base gets 8 per pretraining step)."""
    return min(2400, 8 * (PRETRAIN_STEPS if steps is None else steps))


def recipe(steps=None, variant="default"):
    """Everything the key covers (see the module docstring)."""
    steps = PRETRAIN_STEPS if steps is None else steps
    r = {"revision": BUILD_REVISION, "steps": part_steps(steps, variant), "batch": PRETRAIN_BATCH,
         "text_corpus": text_corpus(variant), "vocabulary": vocabulary(variant),
         "encoder_corpus": {"seed": ENCODER_CORPUS_SEED, "size": encoder_corpus_size(steps)},
         "llm": LLM_CONFIG, "llm_optim": LLM_OPTIM, "vit": VIT_CONFIG, "vit_processor": VIT_PROCESSOR,
         "ast": AST_CONFIG, "ast_features": AST_FEATURES, "encoder_lr": ENCODER_LR}
    if variant == "acl":
        r.update(encoder_corpus={"seed": ACL_CORPUS_SEED, "fresh": ACL_VIT_TRAIN, "acl": True},
                 vit=ACL_VIT_CONFIG, vit_processor=ACL_VIT_PROCESSOR, audio=build_key(steps),
                 align=dict(ACL_ALIGN, per_world=min(240, steps), max_steps=steps))
        del r["ast"], r["ast_features"]
    return r


def vocabulary(variant="default"):
    from data.generate import vocabulary
    if variant == "acl":
        from data.acl import acl_vocabulary
        return sorted(set(vocabulary()) | set(acl_vocabulary()))
    return vocabulary()


def text_corpus(variant="default"):
    """(modality, instruction, answer) pairs the base's LLM reads; acl's adds its train generators' questions and
    captions (without images)."""
    from data.generate import caption_instruction, text_corpus
    if variant == "acl":
        from data.acl import acl_captions, acl_text_pairs
        return (text_corpus() + [("image", q, a) for _, q, a in acl_text_pairs()] +
                [("image", caption_instruction("image"), c) for c in acl_captions()])
    return text_corpus()


def vit(variant="default"):
    """(ViT config, image processor settings) of a variant."""
    return (ACL_VIT_CONFIG, ACL_VIT_PROCESSOR) if variant == "acl" else (VIT_CONFIG, VIT_PROCESSOR)


def build_key(steps=None, variant="default"):
    """10 hex digits naming the base that `steps` (default: PRETRAIN_STEPS) and the current code would build."""
    return _key(PRETRAIN_STEPS if steps is None else steps, variant)


@functools.lru_cache(maxsize=None)
def _key(steps, variant="default"):
    """build_key, kept in cache/keys/ under a hash of what the recipe is drawn from (this file, the builder,
    data/generate.py and data/acl.py, the steps, numpy's version): drawing the corpus and vocabulary costs every
    process ~2 s otherwise."""
    import data.generate
    here = os.path.dirname(os.path.abspath(__file__))
    code = b"".join(open(f, "rb").read() for f in (__file__, os.path.join(here, "tiny.py"), data.generate.__file__,
                                                   os.path.join(here, "acl.py")))
    tag = f"{steps} {np.__version__}" + ("" if variant == "default" else f" {variant}")
    path = os.path.join(CACHE, "keys", hashlib.sha1(code + tag.encode()).hexdigest()[:16])
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        key = recipe_key(steps, variant)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, key)
    except OSError:          # a read-only cache/: the key is drawn again next time
        pass
    return key


def recipe_key(steps, variant="default"):
    """The key itself: a hash of everything the recipe holds."""
    return hashlib.sha1(json.dumps(recipe(steps, variant), sort_keys=True).encode()).hexdigest()[:10]


def shipped_key(root=SHIPPED, variant="default"):
    """The KEY of a built base folder (None when it has none, or misses a part)."""
    try:
        with open(os.path.join(root, "KEY")) as f:
            key = f.read().strip()
    except OSError:
        return None
    return key if all(os.path.exists(os.path.join(root, p, "config.json")) for p in variant_parts(variant)) else None


def shipped_root(variant="default"):
    return SHIPPED if variant == "default" else SHIPPED_ACL


def name(variant="default"):
    """tiny-<key> (tiny-acl-<key>): what run fingerprints and projector records call the base."""
    return f"tiny-{'' if variant == 'default' else variant + '-'}{build_key(variant=variant)}"


def locate(cache=CACHE, variant="default"):
    """The folder of the base the current settings ask for: the shipped data/tiny_base (tiny_base_acl) when its KEY
    is the current key, else cache/<name> (which may not be built yet)."""
    shipped = shipped_root(variant)
    current = shipped_key(shipped, variant) == build_key(variant=variant)
    return shipped if current else os.path.join(cache, name(variant))


def parts(root, variant="default", cache=CACHE):
    """Paths of a base folder's parts ({"llm", "image", "audio"}) plus its name ("name": tiny-<key>, which the run
    fingerprint records); the acl base's audio part is the default's."""
    own = {k: os.path.join(root, k) for k in variant_parts(variant)}
    if variant != "default":
        own["audio"] = os.path.join(locate(cache), "audio")
    return dict(own, name=name(variant))


def tiny_base(cache=CACHE, variant="default"):
    """The base's parts (see parts); a base that is neither shipped nor in cache/ yet is built there first, by
    `python -m data.tiny --build` (a process of its own: see the module docstring)."""
    if variant != "default":
        tiny_base(cache)                                  # its audio encoder
    root = locate(cache, variant)
    if root != shipped_root(variant) and not os.path.exists(os.path.join(root, "DONE")):
        cmd = [sys.executable, "-m", "data.tiny", "--build"] + ["--variant", variant] * (variant != "default")
        r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, MLLM_CL_CACHE=cache))
        if r.returncode != 0 or not os.path.exists(os.path.join(root, "DONE")):
            raise UserError(f"the tiny base {os.path.basename(root)} could not be built into {cache} (`python -m "
                            f"data.tiny --build` exited with status {r.returncode}; its output is above)")
    return parts(root, variant, cache)


# Stage 1 (tools/align.py): the embedded default's aligned projectors, shipped as data/tiny_base/aligned.safetensors
# with the key of the base and of this recipe in their record. Captions from every synthetic world, drawn on a seed
# no benchmark uses.
ALIGN = dict(seed=777001, per_world=min(240, PRETRAIN_STEPS), max_steps=PRETRAIN_STEPS, batch_size=32, lr=1e-3)
SHIPPED_ALIGNED = os.path.join(SHIPPED, "aligned.safetensors")
# the acl base's: captions of acl pictures of both generators (data/acl.py caption()), 240 per ability and generator
ACL_ALIGN = dict(ALIGN, seed=777002)


def align_key(steps=None):
    """The aligned projectors' key: the base's key and the alignment recipe (tools/align.py's code included)."""
    steps = PRETRAIN_STEPS if steps is None else steps
    recipe = dict(ALIGN, per_world=min(240, steps), max_steps=steps)
    code = open(os.path.join(ROOT, "tools", "align.py"), "rb").read()
    blob = json.dumps({"base": build_key(steps), "align": recipe}, sort_keys=True).encode() + code
    return hashlib.sha1(blob).hexdigest()[:10]


def _record(path):
    """The record tools/align.py wrote into a projector file ({} when there is none)."""
    from safetensors import safe_open
    try:
        with safe_open(path, "pt") as f:
            return json.loads(f.metadata()["record"])
    except Exception:
        return {}


def _record_key(path):
    return _record(path).get("key")


def aligned_projectors(cache=CACHE, variant="default"):
    """Path of the embedded default's aligned projectors for the current base and recipe: the shipped file when its
    key is current, else cache/aligned-<key>.safetensors, made by tools/align.py (as a process, like the base)."""
    if variant == "acl":
        return _acl_aligned(cache)
    key = align_key()
    if _record_key(SHIPPED_ALIGNED) == key:
        return SHIPPED_ALIGNED
    path = os.path.join(cache, f"aligned-{key}.safetensors")
    if _record_key(path) != key:
        tiny_base(cache)
        cmd = [sys.executable, os.path.join("tools", "align.py"), "--tiny-base", "--out", path]
        r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, MLLM_CL_CACHE=cache))
        if r.returncode != 0 or _record_key(path) != key:
            raise UserError(f"the aligned projectors {os.path.basename(path)} could not be made (`python "
                            f"tools/align.py --tiny-base` exited with status {r.returncode}; its output is above)")
    return path


def _acl_aligned(cache):
    """The acl base's aligned projectors: current when their record names the current acl base, whose key covers
    ACL_ALIGN; else made into cache/ by tools/align.py on acl captions (data.generate.write_acl_alignment)."""
    want = name("acl")
    shipped = os.path.join(SHIPPED_ACL, "aligned.safetensors")
    if _record(shipped).get("llm") == want:
        return shipped
    path = os.path.join(cache, f"aligned-{want}.safetensors")
    if _record(path).get("llm") != want:
        from data.generate import write_acl_alignment
        tiny_base(cache, "acl")
        n, seed = ACL_ALIGN["per_world"], ACL_ALIGN["seed"]
        root = write_acl_alignment(os.path.join(cache, "align", f"acl-seed{seed}-n{n}"), seed, n)
        cmd = [sys.executable, os.path.join("tools", "align.py"), "--out", path, "--data-root", root, "--tasks",
               "acl-align", "--seed", str(seed), "--max-steps", str(ACL_ALIGN["max_steps"])]
        r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, MLLM_CL_CACHE=cache))
        if r.returncode != 0 or _record(path).get("llm") != want:
            raise UserError(f"the acl base's aligned projectors could not be made (`{' '.join(cmd[1:])}` exited with "
                            f"status {r.returncode}; its output is above)")
    return path
