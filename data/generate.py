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
  text   text-only instructions (facts, counting, copying, arithmetic): never a CL task, used for the base LLM,
         for MoInCL's IKD and to measure "LLM ability retention".

Everything is drawn from numpy Generators seeded by (seed, task name), so a task's files depend only on the seed.
Scenarios add tasks by registering a `make_<kind>` function in TASKS; `text_corpus()` lists every sentence the
tiny base LLM is pretrained on, so a new world's vocabulary reaches the tokenizer automatically.

    python -m data.generate --scenario micl --seed 0 --out cache/data/seed0
"""
import argparse
import json
import os
import shutil
import zlib

import av
import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

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
SIZES_PER_SPLIT = {"train": 320, "test": 64}
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


def write_task(root, name, seed, sizes=SIZES_PER_SPLIT):
    """Write `root/name/{train,test}.jsonl` and `root/name/media/*` for one registered task."""
    modality, kind = TASKS[name]
    d = os.path.join(root, name)
    os.makedirs(os.path.join(d, "media"), exist_ok=True)
    for split, n in sizes.items():
        rng = _rng(seed, name, split)
        rows = []
        for i in range(n):
            media, instr, target, answers = make_example(modality, kind, rng)
            rel = f"media/{split}_{i:04d}.{EXT[modality]}"
            write_media(os.path.join(d, rel), modality, media)
            row = {"id": f"{name}/{split}/{i}", "modality": modality, "media": rel, "instruction": instr, "target": target}
            if answers is not None:
                row["answers"] = answers
            rows.append(row)
        _write_jsonl(os.path.join(d, f"{split}.jsonl"), rows)


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


def build(root, tasks, seed):
    """Generate the named tasks (+ the text-only set) under root unless already complete. Returns root."""
    missing = [t for t in tasks if not os.path.exists(os.path.join(root, t, "DONE"))]
    for t in missing:
        shutil.rmtree(os.path.join(root, t), ignore_errors=True)   # a half-written task from a crash
        write_task(root, t, seed)
        open(os.path.join(root, t, "DONE"), "w").close()
    if not os.path.exists(os.path.join(root, "text", "DONE")):
        write_text_task(root, seed)
        open(os.path.join(root, "text", "DONE"), "w").close()
    return root


def text_corpus(seed=12345, n_per_task=400, n_text=4000):
    """Sentences the tiny base LLM is pretrained on: instruction -> target pairs of every registered task drawn
    *without* media (so the LLM knows the words and answer formats but not what any input shows) plus the
    text-only instruction set. Uses its own seed so the base model is the same for every benchmark seed."""
    pairs = []
    for name, (modality, kind) in sorted(TASKS.items()):
        if kind == "mixed":          # same sentences as its -cap and -qa tasks
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
    return pairs


def vocabulary():
    """Every word any task, instruction or prompt template can contain (for the tiny word-level tokenizer)."""
    words = set(NUMBERS) | set(WORDS) | {"answer", ":", "?", ".", ",", "image", "audio", "video", "text"}
    for _, q, a in text_corpus(n_per_task=2000, n_text=3000):
        words |= set(_split_words(q)) | set(_split_words(a))
    for q, a in FACTS:
        words |= set(_split_words(q)) | set(_split_words(a))
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
