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


def part_steps(steps=None):
    """Pretraining steps of each part: 1.5x for the LLM (at 600 it had not learned to copy, "repeat : dog" ->
    "key"; text-only accuracy 56.5 vs 93.5 at 900, measured on the text test split) and for the ViT (its corpus
    holds two worlds: shapes + dcl domain scenes)."""
    steps = PRETRAIN_STEPS if steps is None else steps
    return {"llm": steps * 3 // 2, "image": steps * 3 // 2, "audio": steps}


def encoder_corpus_size(steps=None):
    """Items per world of the encoders' corpus: 2400 (a throwaway test base gets 8 per pretraining step)."""
    return min(2400, 8 * (PRETRAIN_STEPS if steps is None else steps))


def recipe(steps=None):
    """Everything the key covers (see the module docstring)."""
    from data.generate import text_corpus, vocabulary
    steps = PRETRAIN_STEPS if steps is None else steps
    return {"revision": BUILD_REVISION, "steps": part_steps(steps), "batch": PRETRAIN_BATCH,
            "text_corpus": text_corpus(), "vocabulary": vocabulary(),
            "encoder_corpus": {"seed": ENCODER_CORPUS_SEED, "size": encoder_corpus_size(steps)},
            "llm": LLM_CONFIG, "llm_optim": LLM_OPTIM, "vit": VIT_CONFIG, "vit_processor": VIT_PROCESSOR,
            "ast": AST_CONFIG, "ast_features": AST_FEATURES, "encoder_lr": ENCODER_LR}


def build_key(steps=None):
    """10 hex digits naming the base that `steps` (default: PRETRAIN_STEPS) and the current code would build."""
    return _key(PRETRAIN_STEPS if steps is None else steps)


@functools.lru_cache(maxsize=None)
def _key(steps):
    """build_key, kept in cache/keys/ under a hash of what the recipe is drawn from (this file, the builder,
    data/generate.py and data/acl.py, the steps, numpy's version): drawing the corpus and vocabulary costs every
    process ~2 s otherwise."""
    import data.generate
    here = os.path.dirname(os.path.abspath(__file__))
    code = b"".join(open(f, "rb").read() for f in (__file__, os.path.join(here, "tiny.py"), data.generate.__file__,
                                                   os.path.join(here, "acl.py")))
    path = os.path.join(CACHE, "keys", hashlib.sha1(code + f"{steps} {np.__version__}".encode()).hexdigest()[:16])
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        key = recipe_key(steps)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, key)
    except OSError:          # a read-only cache/: the key is drawn again next time
        pass
    return key


def recipe_key(steps):
    """The key itself: a hash of everything the recipe holds."""
    return hashlib.sha1(json.dumps(recipe(steps), sort_keys=True).encode()).hexdigest()[:10]


def shipped_key(root=SHIPPED):
    """The KEY of a built base folder (None when it has none, or misses a part)."""
    try:
        with open(os.path.join(root, "KEY")) as f:
            key = f.read().strip()
    except OSError:
        return None
    return key if all(os.path.exists(os.path.join(root, p, "config.json")) for p in PARTS) else None


def locate(cache=CACHE):
    """The folder of the base the current settings ask for: the shipped data/tiny_base when its KEY is the current
    key, else cache/tiny-<key> (which may not be built yet)."""
    key = build_key()
    return SHIPPED if shipped_key() == key else os.path.join(cache, f"tiny-{key}")


def parts(root):
    """Paths of a base folder's parts ({"llm", "image", "audio"}) plus its name ("name": tiny-<key>, which the run
    fingerprint records)."""
    return dict({k: os.path.join(root, k) for k in PARTS}, name=f"tiny-{build_key()}")


def tiny_base(cache=CACHE):
    """The base's parts (see parts); a base that is neither shipped nor in cache/ yet is built there first, by
    `python -m data.tiny --build` (a process of its own: see the module docstring)."""
    root = locate(cache)
    if root != SHIPPED and not os.path.exists(os.path.join(root, "DONE")):
        cmd = [sys.executable, "-m", "data.tiny", "--build"]
        r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, MLLM_CL_CACHE=cache))
        if r.returncode != 0 or not os.path.exists(os.path.join(root, "DONE")):
            raise UserError(f"the tiny base {os.path.basename(root)} could not be built into {cache} (`python -m "
                            f"data.tiny --build` exited with status {r.returncode}; its output is above)")
    return parts(root)


# Stage 1 (tools/align.py): the embedded default's aligned projectors, shipped as data/tiny_base/aligned.safetensors
# with the key of the base and of this recipe in their record. Captions from every synthetic world, drawn on a seed
# no benchmark uses.
ALIGN = dict(seed=777001, per_world=min(240, PRETRAIN_STEPS), max_steps=PRETRAIN_STEPS, batch_size=32, lr=1e-3)
SHIPPED_ALIGNED = os.path.join(SHIPPED, "aligned.safetensors")


def align_key(steps=None):
    """The aligned projectors' key: the base's key and the alignment recipe (tools/align.py's code included)."""
    steps = PRETRAIN_STEPS if steps is None else steps
    recipe = dict(ALIGN, per_world=min(240, steps), max_steps=steps)
    code = open(os.path.join(ROOT, "tools", "align.py"), "rb").read()
    blob = json.dumps({"base": build_key(steps), "align": recipe}, sort_keys=True).encode() + code
    return hashlib.sha1(blob).hexdigest()[:10]


def _record_key(path):
    from safetensors import safe_open
    try:
        with safe_open(path, "pt") as f:
            return json.loads(f.metadata()["record"]).get("key")
    except Exception:
        return None


def aligned_projectors(cache=CACHE):
    """Path of the embedded default's aligned projectors for the current base and recipe: the shipped file when its
    key is current, else cache/aligned-<key>.safetensors, made by tools/align.py (as a process, like the base)."""
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
