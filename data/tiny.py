"""The builder of the embedded default's tiny base: a tiny Llama-family LLM with a word-level tokenizer and tiny ViT /
AST encoders, pretrained on the synthetic worlds and saved in Hugging Face format, so they load through exactly the
same code as real models. LoRA then adapts an LLM that already knows the language, and the projectors read encoders
that already know the worlds' attributes. Where the base lies and its key (what it is built from): data/base.py.

A training program like a method file: it stands on common.py (the LLM learns the very prompt format MLLM.collate
builds), and nothing below common.py imports it; data/base.py runs it as a process when a base must be built.

    python -m data.tiny --rebuild        # rebuild data/tiny_base/ (after changing anything the key covers)
    python -m data.tiny --build          # build the base the current settings ask for into cache/ (if not there)
    python -m data.tiny --key            # print the key of the current settings and whether data/tiny_base has it
    ... --variant acl                    # the same for the acl base (data/tiny_base_acl; data/base.py)
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

if __package__ in (None, ""):                     # `python data/tiny.py`: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import MLLM, ce_loss   # noqa: E402
from data import base   # noqa: E402
from data.base import (ACL_CORPUS_SEED, ACL_VIT_TRAIN, AST_CONFIG, AST_FEATURES, DEFAULT_STEPS,  # noqa: E402
                       ENCODER_CORPUS_SEED, ENCODER_LR, LLM_CONFIG, LLM_OPTIM, PRETRAIN_BATCH, PRETRAIN_STEPS,
                       build_key, encoder_corpus_size, part_steps, variant_parts)
from data.files import CACHE   # noqa: E402
from data.load import Sample   # noqa: E402


def build_tiny(cache=CACHE, variant="default"):
    """The base's parts (data/base.py parts): the shipped data/tiny_base when its KEY is the current key, else
    cache/tiny-<key>, built there now unless it is already (the acl variant: data/tiny_base_acl,
    cache/tiny-acl-<key>)."""
    if variant != "default":
        build_tiny(cache)                # the acl base borrows the default's audio encoder
    root = base.locate(cache, variant)
    if root != base.shipped_root(variant):
        from data.generate import locked
        with locked(root):               # two runs started at once: one builds, the other waits for its DONE
            if not os.path.exists(os.path.join(root, "DONE")):
                _build(root, base.PRETRAIN_STEPS, variant)
                open(os.path.join(root, "DONE"), "w").close()
    return base.parts(root, variant, cache)



def _build(root, steps, variant="default"):
    """Pretrain the variant's parts for the budget `steps` (the key's) in parallel processes into root/{llm,image,
    audio}; one progress bar here (the workers report their steps through a queue), one line per finished part."""
    import concurrent.futures
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    os.makedirs(root, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // 3)
    parts = variant_parts(variant)
    total = {k: v for k, v in part_steps(steps, variant).items() if k in parts}
    done, t0 = dict.fromkeys(parts, 0), time.time()
    queue = ctx.Queue()
    bar = tqdm(total=sum(total.values()), desc="build tiny base (once)", unit="step", dynamic_ncols=True)

    def drain():
        while not queue.empty():
            part, step = queue.get()
            bar.update(step - done[part])
            done[part] = step
        bar.set_postfix_str(" ".join(f"{p} {100 * done[p] // total[p]}%" for p in parts), refresh=False)

    with concurrent.futures.ProcessPoolExecutor(3, mp_context=ctx, initializer=_init_worker, initargs=(queue,)) as pool:
        futures = {pool.submit(_build_part, k, os.path.join(root, k), threads, total[k], encoder_corpus_size(steps),
                               variant): k for k in parts}
        pending = set(futures)
        while pending:
            finished, pending = concurrent.futures.wait(pending, timeout=0.5)
            drain()
            for f in finished:
                f.result()                                   # re-raises a worker's error here
                bar.write(f"tiny base: {futures[f]} pretrained ({total[futures[f]]} steps) in {time.time() - t0:.0f} s")
    drain()
    bar.close()


_QUEUE = None


def _init_worker(queue):
    global _QUEUE
    _QUEUE = queue


def _progress(part, steps):
    """Per-step callback of a part's pretraining loop: reports every 1 % (and the last step) to the parent."""
    every = max(1, steps // 100)

    def report(step):
        if _QUEUE is not None and (step % every == 0 or step == steps):
            _QUEUE.put((part, step))
    return report


def _build_part(part, path, threads, steps, corpus_size, variant="default"):
    """Pretrain one part for `steps` and save it (runs in its own process; seeded, so the build is repeatable).
    `corpus_size`: items per world of the encoders' corpus."""
    _quiet_worker()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if part == "llm":
        tok = _build_tokenizer(base.vocabulary(variant))
        tok.save_pretrained(path)
        llm = _pretrain_tiny_llm(tok, base.text_corpus(variant), steps=steps, progress=_progress(part, steps))
        llm.save_pretrained(path)
    elif part == "image":
        from transformers import ViTConfig, ViTImageProcessor, ViTModel
        vit_config, processor = base.vit(variant)
        vit = ViTModel(ViTConfig(**vit_config), add_pooling_layer=False)
        proc = ViTImageProcessor(**processor)
        preprocess = lambda x: proc(x, return_tensors="pt")["pixel_values"]   # noqa: E731
        if variant == "acl":
            heldout = _pretrain_acl_vit(vit, preprocess, steps=steps, progress=_progress(part, steps))
        else:
            _pretrain_encoder(vit, preprocess, *_encoder_corpus("image", corpus_size), steps=steps,
                              progress=_progress(part, steps))
        vit.save_pretrained(path)
        proc.save_pretrained(path)
        if variant == "acl":
            with open(os.path.join(path, "heldout_accuracy.json"), "w") as f:
                json.dump(heldout, f, indent=1)
    else:
        from transformers import ASTConfig, ASTFeatureExtractor, ASTModel
        ast = ASTModel(ASTConfig(**AST_CONFIG))
        fe = ASTFeatureExtractor(**AST_FEATURES)
        sr = AST_FEATURES["sampling_rate"]
        _pretrain_encoder(ast, lambda x: fe(x, sampling_rate=sr, return_tensors="pt")["input_values"],
                          *_encoder_corpus("audio", corpus_size), steps=steps, progress=_progress(part, steps))
        ast.save_pretrained(path)
        fe.save_pretrained(path)


def _quiet_worker():
    """A build worker prints nothing but its progress (through the queue): no "Writing model shards" bars
    from save_pretrained, and not the warning that transformers without torchvision gives once when it resolves
    `ViTImageProcessor` to its PIL twin `ViTImageProcessorPil` (what the shipped base was built with)."""
    import logging

    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers.utils.import_utils").addFilter(
        lambda record: "requires torchvision (not installed)" not in record.getMessage())


def _encoder_corpus(modality, n=None):
    """Media with attribute labels for encoder pre-training, drawn with a seed no benchmark uses (like CLIP/AST,
    the encoders know the world's attributes, never the benchmark's samples): encoder_corpus_size() items per world
    (1.5x for images). Images also get a coarse (x, y) grid cell of a single shape, so the patch tokens keep the
    positions that video direction questions need, and a third of the images are dcl domain scenes labelled with
    domain / object / count / place (a real ViT knows aerial, medical, road, diagram and chart images apart).
    Label -1 = not applicable to the item (ignored by that head)."""
    from data import generate as G
    n = n or encoder_corpus_size()
    rng = np.random.default_rng(ENCODER_CORPUS_SEED)
    objects = [o for d in G.DOMAIN_ORDER for o in G.DOMAIN_OBJECTS[d]]
    media, labels = [], []
    for _ in range(n * 3 // 2 if modality == "image" else n):
        if modality == "image" and rng.random() < 1 / 3:      # a dcl domain scene
            d = G.DOMAIN_ORDER[int(rng.integers(len(G.DOMAIN_ORDER)))]
            a = dict(G.sample_domain_attrs(d, rng), domain=d)
            media.append(np.asarray(G.DOMAIN_RENDER[d](a, rng)))
            di = G.DOMAIN_ORDER.index(d)
            labels.append([-1, -1, -1, -1, a["count"], -1, -1, di, objects.index(a["object"]),
                           2 * di + G.DOMAIN_PLACES[d].index(a["place"])])
        elif modality == "image":
            a = G.sample_image_attrs(rng)
            if rng.random() < 0.5:   # one shape anywhere: label its grid cell
                x, y = int(rng.integers(6, G.IMG - 6)), int(rng.integers(6, G.IMG - 6))
                from PIL import Image, ImageDraw
                img = Image.new("RGB", (G.IMG, G.IMG), tuple(int(v) for v in rng.integers(0, 40, 3)))
                G._draw_shape(ImageDraw.Draw(img), a["shape"], x, y, G.SIZES[a["size"]], G.COLOURS[a["colour"]])
                a = dict(a, count=1, side="left" if x < G.IMG // 2 else "right")
                cell = (x * 4 // G.IMG, y * 4 // G.IMG)
            else:
                img, cell = G.render_image(a, rng), (4, 4)      # 4 = "no single-shape position"
            media.append(np.asarray(img))
            labels.append([G.SHAPES.index(a["shape"]), list(G.COLOURS).index(a["colour"]), list(G.SIZES).index(a["size"]),
                           G.SIDES.index(a["side"]), a["count"], *cell, len(G.DOMAIN_ORDER), -1, -1])
        else:
            a = G.sample_audio_attrs(rng)
            media.append(G.render_audio(a, rng))
            labels.append([list(G.PITCHES).index(a["pitch"]), G.PATTERNS.index(a["pattern"]),
                           G.TIMBRES.index(a["timbre"]), a["count"]])
    return media, torch.tensor(labels)


def _acl_pictures(n, rng):
    """n acl pictures, a quarter of each ability, half from each generator (a real ViT has seen text in many fonts and
    layouts), labelled per attribute (data/acl.py LABELS: ability, the text, the expression's numbers and operator,
    the tallest bar, the objects of each kind, the pair's relation, the selected and the pointed button) and per
    patch (data/acl.py patch_labels: the glyph, object, bar, pointer or selection under it)."""
    from data import acl
    media, labels, patches = [], [], []
    for i in range(n):
        img, _, lab, patch = acl.describe(acl.ORDER[i % 4], ("train", "test")[i // 4 % 2], rng)
        media.append(np.asarray(img))
        labels.append(lab)
        patches.append(patch)
    return media, torch.tensor(labels), torch.tensor(patches)


def _pretrain_acl_vit(enc, preprocess, steps, bs=PRETRAIN_BATCH, progress=None):
    """_pretrain_encoder's multi-head attribute classification for the acl ViT, plus one label per patch token (what
    is drawn under it), on bs fresh pictures every step (own seed), lr warmup then cosine (data/base.py
    ACL_VIT_TRAIN). Returns each head's accuracy (%) on 480 held-out pictures (another seed; `patch`: on patches
    something is drawn under): what the ViT has learned to read, kept beside it as heldout_accuracy.json."""
    from data import acl
    rng = np.random.default_rng(ACL_CORPUS_SEED)
    heads = nn.ModuleList(nn.Linear(enc.config.hidden_size, k) for k in acl.LABEL_CLASSES)
    patch_head = nn.Linear(enc.config.hidden_size, len(acl.PATCH_MARKS))
    params = list(enc.parameters()) + list(heads.parameters()) + list(patch_head.parameters())
    opt = torch.optim.AdamW(params, lr=ACL_VIT_TRAIN["lr"])
    warmup = min(ACL_VIT_TRAIN["warmup"], max(1, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * s / steps)))
    for step in range(1, steps + 1):
        media, y, yp = _acl_pictures(bs, rng)
        tokens = enc(preprocess(media)).last_hidden_state                  # (bs, 1 + patches, hidden): CLS first
        h = tokens.mean(1)                                                  # (bs, hidden): mean over tokens
        loss = _heads_loss(heads, h, y)
        if ACL_VIT_TRAIN["patch_labels"]:                                   # every patch token's own label
            loss = loss + F.cross_entropy(patch_head(tokens[:, 1:]).flatten(0, 1), yp.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress(step)
    enc.eval()
    media, y, yp = _acl_pictures(480, np.random.default_rng(ACL_CORPUS_SEED + 1))
    with torch.no_grad():
        tokens = torch.cat([enc(preprocess(media[i:i + 120])).last_hidden_state for i in range(0, 480, 120)])
        h, drawn = tokens.mean(1), yp > 0
        acc = {name: (head(h[y[:, k] >= 0]).argmax(1) == y[y[:, k] >= 0, k]).float().mean()
               for k, (name, head) in enumerate(zip(acl.LABELS, heads))}
        acc["patch"] = (patch_head(tokens[:, 1:][drawn]).argmax(-1) == yp[drawn]).float().mean()
    return {name: round(100 * a.item(), 1) for name, a in acc.items()}


def _heads_loss(heads, h, y):
    """Summed cross-entropy of the attribute heads on pooled features h (bs, hidden); y (bs, heads), -1: n/a (a head
    with no labelled picture in the batch adds nothing)."""
    return sum(F.cross_entropy(head(h), y[:, k], ignore_index=-1) for k, head in enumerate(heads)
               if (y[:, k] >= 0).any())


def _pretrain_encoder(enc, preprocess, media, labels, steps=PRETRAIN_STEPS, bs=PRETRAIN_BATCH, progress=None):
    """Multi-head attribute classification on mean-pooled encoder tokens; only the encoder is kept."""
    x = torch.cat([preprocess(media[i:i + 256]) for i in range(0, len(media), 256)])
    n_cls = (labels.max(0).values + 1).tolist()
    heads = nn.ModuleList(nn.Linear(enc.config.hidden_size, k) for k in n_cls)
    opt = torch.optim.AdamW(list(enc.parameters()) + list(heads.parameters()), lr=ENCODER_LR)
    g = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (bs,), generator=g)
        h = enc(x[idx]).last_hidden_state.mean(1)
        loss = _heads_loss(heads, h, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress:
            progress(step)
    enc.eval()


def _build_tokenizer(vocab):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<media>"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + vocab)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")   # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def _pretrain_tiny_llm(tok, corpus, steps=PRETRAIN_STEPS, progress=None):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), **LLM_CONFIG, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    llm = LlamaForCausalLM(cfg)
    samples = [Sample(str(i), "text", q, a) for i, (_, q, a) in enumerate(corpus)]
    opt = torch.optim.AdamW(llm.parameters(), lr=LLM_OPTIM["lr"], weight_decay=LLM_OPTIM["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LLM_OPTIM["lr"], total_steps=steps,
                                                pct_start=LLM_OPTIM["pct_start"])
    rng = np.random.default_rng(0)
    shell = MLLM(llm, tok, {})
    for step in range(1, steps + 1):
        b = shell.collate([samples[i] for i in rng.integers(0, len(samples), PRETRAIN_BATCH)])
        loss = ce_loss(shell(b), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress(step)
    return llm.eval()


def rebuild(out=None, variant="default"):
    """Build the variant's base from scratch into `out` (default data/tiny_base or data/tiny_base_acl, the shipped
    base) and write its KEY (what it holds beside the parts, e.g. aligned projectors, is kept)."""
    if base.PRETRAIN_STEPS != DEFAULT_STEPS:
        raise SystemExit(f"error: MLLM_CL_TINY_STEPS={base.PRETRAIN_STEPS}: the shipped base is the {DEFAULT_STEPS}-step "
                         f"default; unset MLLM_CL_TINY_STEPS to rebuild it")
    out = out or base.shipped_root(variant)
    key, tmp = build_key(variant=variant), out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.time()
    _build(tmp, DEFAULT_STEPS, variant)
    with open(os.path.join(tmp, "KEY"), "w") as f:
        f.write(key + "\n")
    os.makedirs(out, exist_ok=True)
    for part in variant_parts(variant) + ("KEY",):
        shutil.rmtree(os.path.join(out, part), ignore_errors=True)
        os.replace(os.path.join(tmp, part), os.path.join(out, part))
    shutil.rmtree(tmp)
    print(f"tiny base {base.name(variant)} written to {out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="The embedded default's tiny base (see data/tiny.py's docstring).")
    p.add_argument("--rebuild", action="store_true", help="rebuild the shipped base (600 steps) into --out")
    p.add_argument("--out", default=None, help="where --rebuild writes the base (default: the shipped folder)")
    p.add_argument("--variant", choices=base.VARIANTS, default="default", help="acl: acl's own base (data/base.py)")
    p.add_argument("--build", action="store_true", help="build the base the current settings ask for into cache/")
    p.add_argument("--key", action="store_true", help="print the key of the current settings")
    a = p.parse_args()
    from data import tiny            # the workers must unpickle data.tiny's functions, not __main__'s
    if a.rebuild:
        tiny.rebuild(a.out, a.variant)
    elif a.build:
        print(f"tiny base: {os.path.dirname(tiny.build_tiny(variant=a.variant)['llm'])}")
    elif a.key:
        shipped = base.shipped_root(a.variant)
        has = base.locate(variant=a.variant) == shipped
        print(f"{base.name(a.variant)}: {shipped + ' has it' if has else 'not shipped, built into cache/'}")
    else:
        p.print_help()
