"""Synthetic multimodal continual-learning benchmark, written as real files.

Every task is a folder with `train.jsonl` / `test.jsonl` manifests and a `media/` folder of real PNG (pillow),
WAV (soundfile) and MP4 (av, libx264) files, so the loaders exercise the same decoding path as real datasets.
Manifest line (see data/README.md):
    {"id", "modality": "image|audio|video|text", "media": "media/x.png" (relative to the manifest) or null,
     "instruction", "target", "answers": [...] (QA only)}

Worlds (SPEC 3):
  image  shapes: shape, colour, size, side (left/right), count        -> "two small red circles on the left"
  audio  tones:  pitch, pattern (rising/falling/steady/beeping), timbre, count -> "two high buzzy rising tones"
  video  a moving shape: shape, colour, direction, speed              -> "a red circle moving left quickly"
  dcl    five image-QA domains (dcl-rs, dcl-med, dcl-ad, dcl-sci, dcl-fin) asking the same questions about
         aerial grids, cells on tissue, road scenes, science diagrams and price charts (MLLM-CL's domain CL)
  acl    four image-QA abilities (acl-ocr, acl-math, acl-vp, acl-gui; MLLM-CL's ability CL), drawn by data/acl.py:
         64 px images, a test split from another generator (fonts, layouts, backgrounds, phrasings) and an IID
         held-out split test_iid.jsonl; every line names its scoring rule ("metric") and its style ("style")
  text   text-only instructions (facts, counting, copying, arithmetic): never a CL task, used for the base LLM,
         for MoInCL's IKD and to measure "LLM ability retention".

Everything is drawn from numpy Generators seeded by (seed, task name), so a task's files depend only on the seed.
Scenarios add tasks by registering a `make_<kind>` function in TASKS; `text_corpus()` lists every sentence the
tiny base LLM is pretrained on, so a new world's vocabulary reaches the tokenizer automatically.

    python -m data.generate --scenario micl --seed 0 --out cache/data/seed0
"""
import argparse
import contextlib
import hashlib
import json
import os
import shutil
import zlib

import av
import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from data import acl as ACL

try:
    import fcntl                  # POSIX; without it runs started side by side on a fresh cache are not serialised
except ImportError:
    fcntl = None

IMG = 40                      # image / video frame side (pixels)
SR = 16000                    # audio sample rate
AUDIO_SECONDS = 0.6
VIDEO_FRAMES = 8
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

# ------------------------------------------------------------------------------------------------ image world
SHAPES = ["circle", "square", "triangle"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 70, 230), "yellow": (230, 210, 30)}
SIZES = {"small": 4, "large": 6}          # radius in pixels
SIDES = ["left", "right"]
IMAGE_QUESTIONS = [("what colour are the shapes?", "colour"), ("what shape are they?", "shape"),
                   ("how many shapes are there?", "count"), ("which side are the shapes on?", "side"),
                   ("what size are the shapes?", "size")]


def _plural(word, n):
    return word if n == 1 else word + "s"


def _draw_shape(draw, shape, cx, cy, r, rgb):
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=rgb)


def sample_image_attrs(rng):
    return dict(shape=str(rng.choice(SHAPES)), colour=str(rng.choice(list(COLOURS))), size=str(rng.choice(list(SIZES))),
                side=str(rng.choice(SIDES)), count=int(rng.integers(1, 4)))


def render_image(a, rng):
    img = Image.new("RGB", (IMG, IMG), tuple(int(v) for v in rng.integers(0, 40, 3)))
    draw = ImageDraw.Draw(img)
    r = SIZES[a["size"]]
    x0 = 10 if a["side"] == "left" else 30
    ys = {1: [20], 2: [12, 28], 3: [7, 20, 33]}[a["count"]]
    for y in ys:
        _draw_shape(draw, a["shape"], x0 + int(rng.integers(-2, 3)), y + int(rng.integers(-1, 2)), r, COLOURS[a["colour"]])
    return img


def image_caption(a):
    return f"{NUMBERS[a['count']]} {a['size']} {a['colour']} {_plural(a['shape'], a['count'])} on the {a['side']}"


def image_answer(a, key):
    return NUMBERS[a["count"]] if key == "count" else a[key]


# ------------------------------------------------------------------------------------------------ audio world
PITCHES = {"low": 260.0, "mid": 520.0, "high": 1040.0}
PATTERNS = ["rising", "falling", "steady", "beeping"]
TIMBRES = ["pure", "buzzy"]
AUDIO_QUESTIONS = [("what is the pitch of the tones?", "pitch"), ("how do the tones change?", "pattern"),
                   ("what do the tones sound like?", "timbre"), ("how many tones are there?", "count")]


def sample_audio_attrs(rng):
    return dict(pitch=str(rng.choice(list(PITCHES))), pattern=str(rng.choice(PATTERNS)),
                timbre=str(rng.choice(TIMBRES)), count=int(rng.integers(1, 4)))


def render_audio(a, rng):
    n = int(SR * AUDIO_SECONDS)
    wav = np.zeros(n, np.float32)
    seg = n // a["count"]
    on = int(seg * 0.7)                                     # each tone fills 70% of its slot, then silence
    t = np.arange(on) / SR
    f0 = PITCHES[a["pitch"]] * float(rng.uniform(0.95, 1.05))
    glide = {"rising": np.linspace(0.8, 1.25, on), "falling": np.linspace(1.25, 0.8, on)}.get(a["pattern"], np.ones(on))
    phase = 2 * np.pi * np.cumsum(f0 * glide) / SR
    tone = np.sin(phase) if a["timbre"] == "pure" else np.sign(np.sin(phase)) * 0.6
    if a["pattern"] == "beeping":
        tone = tone * (np.sin(2 * np.pi * 16 * t) > 0)       # 16 Hz on/off gating
    env = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)      # 10 ms fade in/out, no clicks
    for k in range(a["count"]):
        wav[k * seg:k * seg + on] = 0.5 * tone * env
    wav += rng.normal(0, 0.003, n).astype(np.float32)
    return wav.astype(np.float32)


def audio_caption(a):
    return f"{NUMBERS[a['count']]} {a['pitch']} {a['timbre']} {a['pattern']} {_plural('tone', a['count'])}"


def audio_answer(a, key):
    return NUMBERS[a["count"]] if key == "count" else a[key]


# ------------------------------------------------------------------------------------------------ video world
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS = {"slowly": 1.2, "quickly": 3.2}                     # pixels per frame
VIDEO_QUESTIONS = [("what colour is the moving shape?", "colour"), ("what shape is moving?", "shape"),
                   ("which way does it move?", "direction"), ("how fast does it move?", "speed")]


def sample_video_attrs(rng):
    return dict(shape=str(rng.choice(SHAPES)), colour=str(rng.choice(list(COLOURS))),
                direction=str(rng.choice(list(DIRECTIONS))), speed=str(rng.choice(list(SPEEDS))))


def render_video(a, rng):
    dx, dy = DIRECTIONS[a["direction"]]
    v = SPEEDS[a["speed"]]
    span = v * (VIDEO_FRAMES - 1)
    cx0 = IMG / 2 - dx * span / 2 + float(rng.uniform(-3, 3))
    cy0 = IMG / 2 - dy * span / 2 + float(rng.uniform(-3, 3))
    bg = tuple(int(c) for c in rng.integers(0, 40, 3))
    frames = []
    for f in range(VIDEO_FRAMES):
        img = Image.new("RGB", (IMG, IMG), bg)
        _draw_shape(ImageDraw.Draw(img), a["shape"], round(cx0 + dx * v * f), round(cy0 + dy * v * f), 6, COLOURS[a["colour"]])
        frames.append(np.asarray(img))
    return np.stack(frames)                                  # (F, H, W, 3) uint8


def video_caption(a):
    return f"a {a['colour']} {a['shape']} moving {a['direction']} {a['speed']}"


def video_answer(a, key):
    return {"slowly": "slow", "quickly": "fast"}[a[key]] if key == "speed" else a[key]


# ------------------------------------------------------------------------------------------------ dcl domain worlds
# MLLM-CL's domain continual learning (RS -> Med -> AD -> Sci -> Fin) in miniature: five image-QA domains, each with
# its own visual statistics (background texture, palette, glyphs) and answer vocabulary, but ONE instruction format:
# every domain asks the same DOMAIN_QUESTIONS, so a router has to look at the image, not the question, to pick the
# domain expert. Attributes per image: the main object (domain noun), how many (1-3, shared number words) and
# where (upper / lower half, in the domain's words). The order of the scenario is DOMAIN_ORDER.
# Backgrounds are dark-to-mid tints (<= ~120 per channel) with bright glyphs: the tiny image encoder was pretrained
# on the shapes world (dark backgrounds) and its features collapse on near-white images (measured: pink/white
# backgrounds left ~5% of the within-domain feature variance of the shapes world and made domains inseparable).
DOMAIN_QUESTIONS = [("what is the main object?", "object"), ("how many are there?", "count"), ("where is it?", "place")]
DOMAIN_OBJECTS = {
    "dcl-rs": ["forest", "lake", "building", "tank"],               # remote sensing: aerial farmland grid
    "dcl-med": ["lymphocyte", "neutrophil", "erythrocyte", "tumor"],  # pathology: cells on pink tissue
    "dcl-ad": ["car", "truck", "bus", "pedestrian"],                 # autonomous driving: ego-view road
    "dcl-sci": ["atom", "molecule", "magnet", "prism"],              # science diagrams on blueprint paper
    "dcl-fin": ["rally", "selloff", "range", "spike"],               # finance: price series on a dark chart
}
DOMAIN_PLACES = {"dcl-rs": ("north", "south"), "dcl-med": ("apical", "basal"), "dcl-ad": ("ahead", "nearby"),
                 "dcl-sci": ("top", "bottom"), "dcl-fin": ("high", "low")}       # (upper half, lower half)
DOMAIN_ORDER = list(DOMAIN_OBJECTS)


def sample_domain_attrs(domain, rng):
    return dict(object=str(rng.choice(DOMAIN_OBJECTS[domain])), count=int(rng.integers(1, 4)),
                place=str(rng.choice(DOMAIN_PLACES[domain])))


def _noise(rng, base, amp):
    """(IMG, IMG, 3) uint8 texture: base colour + uniform per-pixel noise of +-amp."""
    x = np.asarray(base, float)[None, None] + rng.uniform(-amp, amp, (IMG, IMG, 3))
    return np.clip(x, 0, 255).astype(np.uint8)


def _slots(a, rng, top=3, bottom=22, height=15):
    """Centres of the a['count'] objects: spread along x, inside the upper or lower half (a['place'])."""
    upper = a["place"] == DOMAIN_PLACES[a["domain"]][0]
    y0 = top if upper else bottom
    xs = {1: [20], 2: [11, 29], 3: [7, 20, 33]}[a["count"]]
    return [(x + int(rng.integers(-2, 3)), y0 + height // 2 + int(rng.integers(-2, 3))) for x in xs]


def _render_rs(a, rng):
    fields = [(100, 80, 30), (85, 95, 35), (110, 90, 45), (90, 75, 25)]   # dusk-lit farmland parcels
    img = np.zeros((IMG, IMG, 3), np.uint8)
    for i in range(4):                                     # 4 x 4 grid of parcels, 10 px each
        for j in range(4):
            img[i * 10:(i + 1) * 10, j * 10:(j + 1) * 10] = fields[int(rng.integers(len(fields)))]
    img = Image.fromarray(np.clip(img.astype(int) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for x, y in _slots(a, rng):
        if a["object"] == "forest":                        # cluster of tree crowns
            for dx, dy in [(-2, -2), (2, -1), (0, 2)]:
                d.ellipse([x + dx - 3, y + dy - 3, x + dx + 3, y + dy + 3], fill=(30, 200, 40))
        elif a["object"] == "lake":
            d.ellipse([x - 5, y - 3, x + 5, y + 3], fill=(40, 70, 230))
        elif a["object"] == "building":                    # flat roof
            d.rectangle([x - 4, y - 4, x + 4, y + 4], fill=(200, 200, 200))
        else:                                              # storage tank: yellow disc
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(230, 210, 30))
    return img


def _render_med(a, rng):
    img = Image.fromarray(_noise(rng, (110, 30, 90), 8))    # stained tissue (dark-field)
    d = ImageDraw.Draw(img)
    for _ in range(3):                                     # stroma fibres
        y = int(rng.integers(0, IMG))
        d.line([(0, y), (IMG, y + int(rng.integers(-8, 9)))], fill=(135, 50, 110), width=1)
    for x, y in _slots(a, rng):
        if a["object"] == "lymphocyte":                    # small, dense nucleus
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(150, 60, 230))
        elif a["object"] == "neutrophil":                  # pale cytoplasm, three nuclear lobes
            d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=(230, 150, 210))
            for dx, dy in [(-2, -1), (2, -1), (0, 2)]:
                d.ellipse([x + dx - 1, y + dy - 1, x + dx + 1, y + dy + 1], fill=(90, 30, 130))
        elif a["object"] == "erythrocyte":                 # red disc
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(220, 30, 30))
        else:                                              # tumour: large irregular mass
            pts = [(x + int(6 * np.cos(t) + rng.integers(-2, 2)), y + int(6 * np.sin(t) + rng.integers(-2, 2)))
                   for t in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
            d.polygon(pts, fill=(240, 140, 30))
    return img


def _render_ad(a, rng):
    img = Image.new("RGB", (IMG, IMG), (30, 100, 30))      # verge
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, IMG, 11], fill=(60, 100, 170))      # sky
    d.polygon([(16, 12), (24, 12), (IMG, IMG), (0, IMG)], fill=(50, 50, 50))   # road to the horizon
    for y in range(14, IMG, 6):                            # dashed centre lane
        d.line([(20, y), (20, y + 2)], fill=(150, 150, 150))
    arr = np.asarray(img).astype(int) + rng.integers(-5, 6, (IMG, IMG, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for x, y in _slots(a, rng, top=13, bottom=25, height=12):
        if a["object"] == "car":
            d.rectangle([x - 3, y - 2, x + 3, y + 2], fill=(220, 30, 30))
        elif a["object"] == "truck":
            d.rectangle([x - 4, y - 4, x + 4, y + 4], fill=(220, 220, 230))
        elif a["object"] == "bus":
            d.rectangle([x - 5, y - 3, x + 5, y + 3], fill=(230, 210, 30))
        else:                                              # pedestrian: head + body
            d.ellipse([x - 1, y - 5, x + 1, y - 3], fill=(30, 200, 220))
            d.rectangle([x - 1, y - 2, x + 1, y + 4], fill=(30, 200, 220))
    return img


def _render_sci(a, rng):
    img = Image.fromarray(_noise(rng, (40, 90, 170), 4))    # blueprint paper
    d = ImageDraw.Draw(img)
    d.rectangle([1, 1, IMG - 2, IMG - 2], outline=(140, 170, 220))   # diagram frame
    d.line([(1, 20), (IMG - 2, 20)], fill=(70, 110, 180))  # panel divider
    for x, y in _slots(a, rng):
        if a["object"] == "atom":                          # orbit + nucleus
            d.ellipse([x - 5, y - 3, x + 5, y + 3], outline=(240, 240, 240))
            d.ellipse([x - 1, y - 1, x + 1, y + 1], fill=(220, 30, 30))
        elif a["object"] == "molecule":                    # two atoms and a bond
            d.line([(x - 3, y), (x + 3, y)], fill=(240, 240, 240))
            d.ellipse([x - 6, y - 2, x - 2, y + 2], fill=(30, 200, 40))
            d.ellipse([x + 2, y - 2, x + 6, y + 2], fill=(220, 30, 30))
        elif a["object"] == "magnet":                      # red north half, white south half
            d.rectangle([x - 5, y - 2, x, y + 2], fill=(220, 30, 30))
            d.rectangle([x, y - 2, x + 5, y + 2], fill=(240, 240, 240))
        else:                                              # prism: yellow triangle
            d.polygon([(x, y - 5), (x - 5, y + 4), (x + 5, y + 4)], fill=(230, 210, 30))
    return img


def _render_fin(a, rng):
    img = Image.fromarray(_noise(rng, (15, 15, 25), 4))    # dark chart
    d = ImageDraw.Draw(img)
    for y in range(5, IMG, 8):                             # price grid
        d.line([(0, y), (IMG, y)], fill=(45, 45, 60))
    upper = a["place"] == DOMAIN_PLACES["dcl-fin"][0]
    y0 = 3 if upper else 22                                # the series live in the upper or lower half (15 px)
    xs = np.arange(3, 38, 5)                               # 7 candles
    shape = {"rally": np.linspace(8, 0, 7), "selloff": np.linspace(0, 8, 7), "range": np.array([4, 3, 5, 3, 4, 3, 4]),
             "spike": np.array([8, 8, 7, 0, 7, 8, 8])}[a["object"]]   # y offset inside the half (0 = top)
    for k, colour in enumerate([(40, 220, 80), (230, 60, 60), (240, 220, 40)][:a["count"]]):   # one series each,
        ys = y0 + np.clip(shape + int(rng.integers(-1, 2)), 0, 8) + 3 * k                   # 3 px apart
        d.line([(int(x), int(y)) for x, y in zip(xs, ys)], fill=colour, width=1)
        for x, y in zip(xs, ys):                           # candle bodies on the line
            d.rectangle([int(x) - 1, int(y) - 1, int(x), int(y) + 1], fill=colour)
    return img


DOMAIN_RENDER = {"dcl-rs": _render_rs, "dcl-med": _render_med, "dcl-ad": _render_ad, "dcl-sci": _render_sci,
                 "dcl-fin": _render_fin}


def make_domain_example(domain, rng):
    """One (media, instruction, target, answers) draw of a dcl domain; the question is drawn independently of
    the domain (same DOMAIN_QUESTIONS everywhere), the answer comes from the domain's vocabulary."""
    a = dict(sample_domain_attrs(domain, rng), domain=domain)
    img = DOMAIN_RENDER[domain](a, rng)
    q, key = DOMAIN_QUESTIONS[int(rng.integers(len(DOMAIN_QUESTIONS)))]
    ans = NUMBERS[a["count"]] if key == "count" else a[key]
    return img, q, ans, [ans]


DOMAINS = {d: (sample_domain_attrs, make_domain_example) for d in DOMAIN_ORDER}
EXPERT_LETTERS = "ABCDEFGHIJ"      # MR-LoRA's router answers with one of these letters (mr_lora.py)
ROUTER_WORDS = ["choose", "the", "expert", "for", "this", "request", ":", ",", "."]   # its prompt's words


# ------------------------------------------------------------------------------------------------ text-only set
FACTS = [("what colour is the sky?", "blue"), ("what colour is grass?", "green"), ("what colour is the sun?", "yellow"),
         ("what colour is blood?", "red"), ("what is the opposite of left?", "right"),
         ("what is the opposite of right?", "left"), ("what is the opposite of up?", "down"),
         ("what is the opposite of down?", "up"), ("what is the opposite of small?", "large"),
         ("what is the opposite of large?", "small"), ("what is the opposite of slow?", "fast"),
         ("what is the opposite of fast?", "slow"), ("what is the opposite of high?", "low"),
         ("what is the opposite of low?", "high"), ("how many sides does a square have?", "four"),
         ("how many sides does a triangle have?", "three"), ("how many corners does a circle have?", "zero"),
         ("what shape is a ball?", "circle"), ("what shape is a box?", "square")]
WORDS = ["cat", "dog", "sun", "tree", "bird", "fish", "moon", "star", "boat", "car", "cup", "key"]


def sample_text_item(rng):
    kind = int(rng.integers(0, 4))
    if kind == 0:
        q, a = FACTS[int(rng.integers(len(FACTS)))]
        return q, a
    if kind == 1:
        ws = list(rng.choice(WORDS, int(rng.integers(1, 6))))
        return "how many words : " + " ".join(ws) + " ?", NUMBERS[len(ws)]
    if kind == 2:
        ws = list(rng.choice(WORDS, int(rng.integers(1, 4))))
        return "repeat : " + " ".join(ws), " ".join(ws)
    x = int(rng.integers(0, 6))
    y = int(rng.integers(0, 11 - x))
    if y <= x and rng.random() < 0.5:
        return f"what is {NUMBERS[x]} minus {NUMBERS[y]} ?", NUMBERS[x - y]
    return f"what is {NUMBERS[x]} plus {NUMBERS[y]} ?", NUMBERS[x + y]


def letter_choice_item(rng):
    """A generic multiple-choice question answered by a letter ("choose the letter of dog : A cat , B dog ." ->
    "B"), for the tiny base LLM's pretraining corpus only (never a benchmark task). A real LLM has read countless
    lettered options; without these the tiny LLM never sees an upper-case letter as an answer, its tied letter
    embeddings stay near their random init (norm 0.54 vs 0.8-1.0 for trained words, measured) and MR-LoRA's
    router, which answers by letter, plateaus at 2.2 nats of letter CE with a vanishing gradient."""
    k = int(rng.integers(2, 7))
    options = [str(w) for w in rng.choice(WORDS, k, replace=False)]
    j = int(rng.integers(k))
    menu = " , ".join(f"{EXPERT_LETTERS[i]} {w}" for i, w in enumerate(options))
    return f"choose the letter of {options[j]} : {menu} .", EXPERT_LETTERS[j]


# ------------------------------------------------------------------------------------------------ task registry
def caption_instruction(modality):
    """The one captioning instruction per modality (MoInCL's PTGM reuses it for pseudo captions)."""
    return f"describe the {modality}."


WORLDS = {  # modality -> (sample attrs, render, caption, answer, questions)
    "image": (sample_image_attrs, render_image, image_caption, image_answer, IMAGE_QUESTIONS),
    "audio": (sample_audio_attrs, render_audio, audio_caption, audio_answer, AUDIO_QUESTIONS),
    "video": (sample_video_attrs, render_video, video_caption, video_answer, VIDEO_QUESTIONS),
}
# task name -> (modality, kind); kind "cap" = captioning (scored by CIDEr-D), "qa" = question answering (exact match),
# "mixed" = each sample is captioning or QA with probability 1/2 (the mcl scenario: one step per modality)
TASKS = {f"{m}-{k}": (m, k) for m in WORLDS for k in ("cap", "qa")}
TASKS.update({m: (m, "mixed") for m in WORLDS})
TASKS.update({d: ("image", "domain") for d in DOMAINS})      # dcl: kind "domain" = QA drawn by make_domain_example
# acl: kind "acl" = ability QA drawn by data/acl.py, its train generator for train / test_iid, its test generator for
# test. Its words and questions enter the acl base's vocabulary and corpus, not these (data/base.py: acl runs on a base
# of its own, so the other scenarios' base and results stay as they are)
TASKS.update({t: ("image", "acl") for t in ACL.ORDER})
SIZES_PER_SPLIT = {"train": 320, "test": 64}
# mcl steps ("mixed") are scored by a ratio, BRG = R[T, j] / R[j, j], which 64 test samples (32 of them QA) left
# noise-dominated: the same saved MERA models scored per-run BRG 89.3-104.0 on those 64 and 91.1-99.9 on 1024 drawn
# from the same stream (README, mcl notes). 512 test samples per modality; evaluation stays cheap (greedy, cached
# features), and the first 64 are the former test split (same rng stream). 3200 training samples, seen twice
# (common.EPOCHS: the steps of 320 x 20), so MERA's 10 % replay is 320 samples a modality: 32 overfit the projectors
# it realigns (docs/mera.md). `--train-limit 320 --epochs 20` gives the 320-sample setting (same rng stream).
MIXED_SIZES = {"train": 3200, "test": 512}
TEXT_SIZES = {"train": 2000, "test": 200}


def _rng(seed, name, split):
    return np.random.default_rng([seed, zlib.crc32(f"{name}/{split}".encode())])


def make_example(modality, kind, rng):
    """One (attrs, media, instruction, target, answers) draw from a world."""
    sample_attrs, render, caption, answer, questions = WORLDS[modality]
    a = sample_attrs(rng)
    media = render(a, rng)
    if kind == "mixed":
        kind = "cap" if rng.random() < 0.5 else "qa"
    if kind == "cap":
        return media, caption_instruction(modality), caption(a), None
    q, key = questions[int(rng.integers(len(questions)))]
    ans = answer(a, key)
    return media, q, ans, [ans]


def write_media(path, modality, media):
    if modality == "image":
        media.save(path)
    elif modality == "audio":
        sf.write(path, media, SR, subtype="PCM_16")
    else:
        write_mp4(path, media)


def write_mp4(path, frames, fps=8):
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": "10"}
        for fr in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


EXT = {"image": "png", "audio": "wav", "video": "mp4"}


def split_sizes(name):
    """Samples per split of a registered task or of the text-only set ("text")."""
    if name == "text":
        return TEXT_SIZES
    kind = TASKS[name][1]
    return MIXED_SIZES if kind == "mixed" else ACL.SIZES if kind == "acl" else SIZES_PER_SPLIT


def write_task(root, name, seed, sizes=None):
    """Write `root/name/{train,test}.jsonl` and `root/name/media/*` for one registered task."""
    modality, kind = TASKS[name]
    sizes = sizes or split_sizes(name)
    d = os.path.join(root, name)
    os.makedirs(os.path.join(d, "media"), exist_ok=True)
    for split, n in sizes.items():
        rng = _rng(seed, name, split)
        rows = []
        for i in range(n):
            extra = {}
            if kind == "acl":
                media, instr, target, metric, style = ACL.make_example(name, ACL.GENERATOR_OF_SPLIT[split], rng)
                answers, extra = [target], {"metric": metric, "style": style}
            else:
                media, instr, target, answers = (make_domain_example(name, rng) if kind == "domain" else
                                                 make_example(modality, kind, rng))
            rel = f"media/{split}_{i:04d}.{EXT[modality]}"
            write_media(os.path.join(d, rel), modality, media)
            row = {"id": f"{name}/{split}/{i}", "modality": modality, "media": rel, "instruction": instr, "target": target}
            if answers is not None:
                row["answers"] = answers
            rows.append(dict(row, **extra))
        _write_jsonl(os.path.join(d, f"{split}.jsonl"), rows)


def write_acl_alignment(root, seed, per_world):
    """Stage-1 captions for the acl base (data/base.py ACL_ALIGN): `per_world` pictures of each acl ability and
    generator, captioned by what they show (ACL.caption), under root/acl-align/{train,test}.jsonl. Returns root."""
    d = os.path.join(root, "acl-align")
    if os.path.exists(os.path.join(d, "DONE")):
        return root
    os.makedirs(os.path.join(d, "media"), exist_ok=True)
    rng, rows = np.random.default_rng(seed), []
    for task in ACL.ORDER:
        for gen in ("train", "test"):
            for _ in range(per_world):
                img, cap = ACL.describe(task, gen, rng)[:2]
                rel = f"media/{len(rows):05d}.png"
                write_media(os.path.join(d, rel), "image", img)
                rows.append({"id": f"acl-align/{len(rows)}", "modality": "image", "media": rel,
                             "instruction": caption_instruction("image"), "target": cap})
    for split in ("train", "test"):          # the scripts read both; alignment trains on train only
        _write_jsonl(os.path.join(d, f"{split}.jsonl"), rows)
    open(os.path.join(d, "DONE"), "w").close()
    return root


def write_text_task(root, seed):
    d = os.path.join(root, "text")
    os.makedirs(d, exist_ok=True)
    for split, n in TEXT_SIZES.items():
        rng = _rng(seed, "text", split)
        rows = []
        for i in range(n):
            q, a = sample_text_item(rng)
            rows.append({"id": f"text/{split}/{i}", "modality": "text", "media": None, "instruction": q, "target": a, "answers": [a]})
        _write_jsonl(os.path.join(d, f"{split}.jsonl"), rows)


def _write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def _generator_id():
    """This file and data/acl.py, hashed: a task drawn by other code is drawn again."""
    h = hashlib.sha1()
    for path in (__file__, ACL.__file__):
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


GENERATOR_ID = _generator_id()


def build(root, tasks, seed):
    """Generate the named tasks (+ the text-only set) under root unless already complete (DONE holds this file's
    GENERATOR_ID and every split has the size split_sizes names, so a cache from an older size or generator is
    redrawn). Returns root."""
    def complete(t):
        done = os.path.join(root, t, "DONE")
        if not os.path.exists(done):
            return False
        with open(done) as f:
            if f.read() != GENERATOR_ID:                   # drawn by another version of this file
                return False
        for split, n in split_sizes(t).items():
            path = os.path.join(root, t, f"{split}.jsonl")
            if not os.path.exists(path):
                return False
            with open(path) as f:
                if sum(1 for _ in f) != n:
                    return False
        return True
    with locked(root):        # runs started at once on a fresh cache: one draws, the others wait, then read it
        missing = [t for t in list(tasks) + ["text"] if not complete(t)]
        if missing:
            print(f"generating the synthetic benchmark into {root} ...", flush=True)
        for t in missing:
            shutil.rmtree(os.path.join(root, t), ignore_errors=True)   # a half-written task from a crash
            write_text_task(root, seed) if t == "text" else write_task(root, t, seed)
            with open(os.path.join(root, t, "DONE"), "w") as f:
                f.write(GENERATOR_ID)
    return root


@contextlib.contextmanager
def locked(root):
    """Hold root/.lock (blocking flock; the OS drops it when the process dies, so a crash leaves no stale lock)."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def text_corpus(seed=12345, n_per_task=400, n_text=4000, n_letter=1500):
    """Sentences the tiny base LLM is pretrained on: instruction -> target pairs of every registered task drawn
    *without* media (so the LLM knows the words and answer formats but not what any input shows), the text-only
    instruction set, and n_letter generic letter-choice questions (letter_choice_item). Uses its own seed so the
    base model is the same for every benchmark seed."""
    pairs = []
    for name, (modality, kind) in sorted(TASKS.items()):
        if kind == "mixed":          # same sentences as its -cap and -qa tasks
            continue
        if kind == "acl":            # the acl base's corpus adds ACL.acl_text_pairs() (data/base.py)
            continue
        if kind == "domain":
            rng = _rng(seed, name, "pretrain")
            for _ in range(n_per_task):
                a = sample_domain_attrs(name, rng)
                q, key = DOMAIN_QUESTIONS[int(rng.integers(len(DOMAIN_QUESTIONS)))]
                pairs.append((modality, q, NUMBERS[a["count"]] if key == "count" else a[key]))
            continue
        sample_attrs, _, caption, answer, questions = WORLDS[modality]
        rng = _rng(seed, name, "pretrain")
        for _ in range(n_per_task):
            a = sample_attrs(rng)
            if kind == "cap":
                pairs.append((modality, caption_instruction(modality), caption(a)))
            else:
                q, key = questions[int(rng.integers(len(questions)))]
                pairs.append((modality, q, answer(a, key)))
    rng = _rng(seed, "text", "train")       # the text-only *train* split of every benchmark seed is a subset
    for _ in range(n_text):
        q, a = sample_text_item(rng)
        pairs.append(("text", q, a))
    rng = _rng(seed, "letters", "pretrain")
    pairs += [("text", *letter_choice_item(rng)) for _ in range(n_letter)]
    return pairs


def vocabulary():
    """Every word any task, instruction or prompt template can contain (for the tiny word-level tokenizer)."""
    words = set(NUMBERS) | set(WORDS) | {"answer", ":", "?", ".", ",", "image", "audio", "video", "text"}
    for _, q, a in text_corpus(n_per_task=2000, n_text=3000):
        words |= set(_split_words(q)) | set(_split_words(a))
    for q, a in FACTS:
        words |= set(_split_words(q)) | set(_split_words(a))
    words |= set(EXPERT_LETTERS) | set(ROUTER_WORDS)                  # MR-LoRA's router prompt and answers
    for name in TASKS:                                               # task names (router's expert descriptions)
        if TASKS[name][1] != "acl":                                  # acl's: the acl base's (data/base.py)
            words |= set(_split_words(name))
    return sorted(words)


def _split_words(s):
    import re
    return re.findall(r"\w+|[^\w\s]+", s)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=sorted(TASKS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    print(build(a.out, a.tasks, a.seed))
