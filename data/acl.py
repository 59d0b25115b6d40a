"""acl: MLLM-CL's ability continual learning (OCR -> math & logic -> visual perception -> GUI agent) in miniature.

Four image-QA abilities, each with TWO generators: `train` draws the training split and the IID held-out split
(`test_iid.jsonl`), `test` draws the test split in other fonts, text sizes / object sizes, layouts, backgrounds and
phrasings, as MLLM-CL trains each ability on one source and tests it on another benchmark (OCRBench, MathVista,
CV-Bench, MMT-Bench). Answers come from the same vocabulary in both (ANSWERS), so the shift is in the pixels and the
question's wording, never in what may be answered.

  acl-ocr   read the word or number shown                                      contains (OCRBench)
  acl-math  a + b / a - b (answer 0-18), "a > b" true? (yes / no), bar charts ("which bar is tallest": a colour)
                                                                               exact (MathVista, answer extracted)
  acl-vp    counting objects of a named kind among distractors (1-5)           contains (CV-Bench count)
            spatial relation of two objects (left / right / above / below)     exact
  acl-gui   an app screen with four labelled buttons, one selected, a pointer on one: "which control is selected /
            under the pointer?", the four labels listed as lettered options    letter (MMT-Bench GUI)

STYLES[task][generator] declares every style factor a generator can draw (font, size, layout, background,
phrasing, options); train and test declare disjoint sets, and every manifest line records the values it drew
(`"style"`), so tests check both. Fonts come only from Pillow itself or are drawn here, never from the system, so
the pixels are the same on every machine with the same Pillow: `px5x7` (a 5x7 bitmap font, upper case, below),
`pilfont` (Pillow's built-in bitmap font, ImageFont.load_default_imagefont()), `aileron` (the scalable font Pillow
>= 10.1 bundles, ImageFont.load_default(size=...), laid out with the BASIC engine so raqm does not matter) and
`seg7` (seven-segment digits drawn here). Train writes in px5x7 / pilfont, test in aileron / seg7.

Images are ACL_IMG = 64 px a side (the other scenarios use 40): a four-letter word in a 5x7 font needs 23 px, two
of them side by side on a GUI screen do not fit in 40; acl runs on a base of its own with a 64 px ViT
(data/base.py, data/README.md acl section). This module imports nothing of the project;
data/generate.py registers its tasks (TASKS kind "acl") and writes the files.
"""
import functools
import io
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ACL_IMG = 64
ORDER = ["acl-ocr", "acl-math", "acl-vp", "acl-gui"]
SIZES = {"train": 320, "test": 64, "test_iid": 64}            # samples per split (test_iid: IID held-out)
GENERATOR_OF_SPLIT = {"train": "train", "test_iid": "train", "test": "test"}

NUMS = [str(i) for i in range(19)]                            # numbers are answered in digits (OCRBench, MathVista)
OCR_WORDS = ["cat", "dog", "sun", "tree", "bird", "fish", "moon", "star", "boat", "car", "cup", "key", "lamp", "door",
             "book", "milk", "ship", "frog", "rain", "road"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 70, 230), "yellow": (230, 210, 30)}
COLOUR_OF = {rgb: name for name, rgb in COLOURS.items()}
KINDS = ["circle", "square", "triangle"]
RELATIONS = ["left", "right", "above", "below"]
COUNTS = [str(n) for n in range(1, 6)]
GUI_WORDS = ["save", "open", "copy", "undo", "send", "edit", "find", "help", "quit", "stop", "play", "menu"]
LETTERS = "ABCD"

ANSWERS = {"acl-ocr": OCR_WORDS + NUMS, "acl-math": NUMS + ["yes", "no"] + list(COLOURS),
           "acl-vp": COUNTS + RELATIONS, "acl-gui": list(LETTERS)}
RULES = {("acl-ocr", "read"): "contains", ("acl-math", "arith"): "exact", ("acl-math", "compare"): "exact",
         ("acl-math", "bars"): "exact", ("acl-vp", "count"): "contains", ("acl-vp", "spatial"): "exact",
         ("acl-gui", "pointer"): "letter", ("acl-gui", "selected"): "letter"}

# ------------------------------------------------------------------------------------------------ declared styles
PHRASINGS = {   # task -> generator -> question type -> templates ({kind}, {a}, {b}: filled in; GUI adds options)
    "acl-ocr": {"train": {"read": ["what is written in the image?", "read the text in the image.",
                                   "what text is shown?"]},
                "test": {"read": ["what does the sign say?", "which text appears in this picture?"]}},
    "acl-math": {"train": {"arith": ["what is the result?", "calculate the expression.",
                                     "what does the expression equal?"],
                           "compare": ["is this true?", "is the statement correct?"],
                           "bars": ["which bar is tallest?", "what colour is the highest bar?"]},
                 "test": {"arith": ["solve the problem in the image.", "what is the value of this calculation?"],
                          "compare": ["does the inequality hold? answer yes or no.",
                                      "is the comparison in the picture right?"],
                          "bars": ["which colour has the largest value in the chart?",
                                   "the tallest column has which colour?"]}},
    "acl-vp": {"train": {"count": ["how many {kind}s are there?", "how many {kind}s can you see?"],
                         "spatial": ["where is the {a} relative to the {b}?", "where is the {a} compared to the {b}?"]},
               "test": {"count": ["how many {kind}s are in the image?", "count the {kind}s in the picture."],
                        "spatial": ["the {a} is on which side of the {b}?",
                                    "in which direction from the {b} is the {a}?"]}},
    "acl-gui": {"train": {"pointer": ["which control is the pointer on?", "which button is under the cursor?"],
                          "selected": ["which control is selected?", "which button is highlighted?"]},
                "test": {"pointer": ["the mouse is hovering over which control?",
                                     "which button would a click hit now?"],
                         "selected": ["which control is currently active?", "which button has the focus?"]}},
}
OPTION_FORMATS = {"train": "{letter}: {word}", "test": "({letter}) {word}"}      # GUI options, joined by spaces
BACKGROUNDS = {"train": ["flat", "noise"], "test": ["gradient", "stripes"]}
LAYOUTS = {
    "acl-ocr": {"train": ["centre", "scatter"], "test": ["sign", "corner"]},
    "acl-math": {"train": ["inline", "inline-shifted", "bars-plain"], "test": ["equation", "column", "bars-axes"]},
    "acl-vp": {"train": ["scatter", "pair-near"], "test": ["rows", "pair-far"]},
    "acl-gui": {"train": ["grid", "grid-titled"], "test": ["list", "sidebar"]},
}
TEXT_FONTS = {   # task -> generator -> font -> sizes (px5x7 / seg7: text height; pilfont: line height; aileron: em)
    "acl-ocr": {"train": {"px5x7": (7, 14), "pilfont": (11,)}, "test": {"aileron": (10, 12, 16), "seg7": (9, 13)}},
    "acl-math": {"train": {"px5x7": (7, 14), "pilfont": (11,)}, "test": {"aileron": (10, 12, 16)}},
    "acl-gui": {"train": {"px5x7": (7,), "pilfont": (11,)}, "test": {"aileron": (10, 12)}}}
BAR_WIDTHS = {"train": (8, 10), "test": (5, 6)}              # math bar charts
OBJECT_RADII = {"train": (3, 4), "test": (5, 6)}            # vp objects
# `--val style` / `--val phrasing` (data/load.py): a shift inside the train generator's own styles, never a test
# style, so settings can be chosen against a shift without reading the test split. A training sample that drew any
# of these values is held out (the validation split); the others are trained on. style: the pixels (a font, bar
# width or object size); phrasing: the wording (the last template of each question type).
VAL_HELD_OUT = {"style": {"acl-ocr": {"font": ["pilfont"]}, "acl-math": {"font": ["pilfont"], "size": ["bar-10"]},
                          "acl-vp": {"size": ["obj-4"]}, "acl-gui": {"font": ["pilfont"]}},
                "phrasing": {t: {"phrasing": [ts[-1] for ts in PHRASINGS[t]["train"].values()]} for t in ORDER}}


def held_out(task, style, kind="style"):
    return any(style.get(k) in v for k, v in VAL_HELD_OUT[kind][task].items())


def _sizes(task, gen):
    out = [f"text-{s}" for sizes in TEXT_FONTS.get(task, {}).get(gen, {}).values() for s in sizes]
    if task == "acl-math":
        out += [f"bar-{w}" for w in BAR_WIDTHS[gen]]
    if task == "acl-vp":
        out += [f"obj-{r}" for r in OBJECT_RADII[gen]]
    return sorted(set(out))


def _declare(task, gen):
    s = {"layout": LAYOUTS[task][gen], "background": BACKGROUNDS[gen], "size": _sizes(task, gen),
         "phrasing": [t for ts in PHRASINGS[task][gen].values() for t in ts]}
    if task in TEXT_FONTS:
        s["font"] = list(TEXT_FONTS[task][gen])
    if task == "acl-gui":
        s["options"] = [OPTION_FORMATS[gen]]
    return s


STYLES = {t: {g: _declare(t, g) for g in ("train", "test")} for t in ORDER}   # task -> generator -> factor -> values


# ------------------------------------------------------------------------------------------------ fonts
# 5x7 bitmap glyphs (rows top to bottom, 5 bits each, MSB = left column), the classic LCD character set
PX5X7 = {
    "A": "0E 11 11 11 1F 11 11", "B": "1E 11 11 1E 11 11 1E", "C": "0E 11 10 10 10 11 0E", "D": "1C 12 11 11 11 12 1C",
    "E": "1F 10 10 1E 10 10 1F", "F": "1F 10 10 1E 10 10 10", "G": "0E 11 10 17 11 11 0F", "H": "11 11 11 1F 11 11 11",
    "I": "0E 04 04 04 04 04 0E", "J": "07 02 02 02 02 12 0C", "K": "11 12 14 18 14 12 11", "L": "10 10 10 10 10 10 1F",
    "M": "11 1B 15 15 11 11 11", "N": "11 11 19 15 13 11 11", "O": "0E 11 11 11 11 11 0E", "P": "1E 11 11 1E 10 10 10",
    "Q": "0E 11 11 11 15 12 0D", "R": "1E 11 11 1E 14 12 11", "S": "0F 10 10 0E 01 01 1E", "T": "1F 04 04 04 04 04 04",
    "U": "11 11 11 11 11 11 0E", "V": "11 11 11 11 11 0A 04", "W": "11 11 11 15 15 15 0A", "X": "11 11 0A 04 0A 11 11",
    "Y": "11 11 11 0A 04 04 04", "Z": "1F 01 02 04 08 10 1F",
    "0": "0E 11 13 15 19 11 0E", "1": "04 0C 04 04 04 04 0E", "2": "0E 11 01 02 04 08 1F", "3": "1F 02 04 02 01 11 0E",
    "4": "02 06 0A 12 1F 02 02", "5": "1F 10 1E 01 01 11 0E", "6": "06 08 10 1E 11 11 0E", "7": "1F 01 02 04 08 08 08",
    "8": "0E 11 11 0E 11 11 0E", "9": "0E 11 11 0F 01 02 0C",
    "+": "00 04 04 1F 04 04 00", "-": "00 00 00 1F 00 00 00", "=": "00 00 1F 00 1F 00 00", "?": "0E 11 01 02 04 00 04",
    ">": "08 04 02 01 02 04 08", "<": "02 04 08 10 08 04 02", " ": "00 00 00 00 00 00 00",
}
# seven segments a (top), b (top right), c (bottom right), d (bottom), e (bottom left), f (top left), g (middle)
SEG7 = {"0": "abcdef", "1": "bc", "2": "abged", "3": "abgcd", "4": "fgbc", "5": "afgcd", "6": "afgedc", "7": "abc",
        "8": "abcdefg", "9": "abcdfg"}


# What each drawn element covers, for the acl ViT's per-patch labels (describe()): None unless describe() records.
# Every draw call below appends (mark, (x0, y0, x1, y1)); the pixels and the random draws are the same either way.
_MARKS = None


def _mark(name, box):
    if _MARKS is not None:
        _MARKS.append((name, tuple(int(v) for v in box)))


@functools.lru_cache(maxsize=None)
def _pil_font():
    return ImageFont.load_default_imagefont()


@functools.lru_cache(maxsize=None)
def _aileron(size):
    """Pillow's bundled scalable font at `size`, laid out by the BASIC engine (the same with or without raqm)."""
    data = ImageFont.load_default(size=size).font_bytes
    return ImageFont.truetype(io.BytesIO(data), size, layout_engine=ImageFont.Layout.BASIC)


def supports(font, text):
    if font == "seg7":
        return text.isdigit()
    if font == "px5x7":
        return all(c in PX5X7 for c in _case(font, text))
    return True


def _case(font, text):
    """px5x7 writes upper case (it has no other); pilfont and aileron write the text as it is (lower case)."""
    return text.upper() if font == "px5x7" else text


def text_box(text, font, size):
    """(width, height) of the ink of `text` in `font` at `size`."""
    text = _case(font, text)
    if font == "px5x7":
        s = size // 7
        return len(text) * 6 * s - s, 7 * s
    if font == "seg7":
        return len(text) * (size // 2 + 3) - 3, size
    f = _pil_font() if font == "pilfont" else _aileron(size)
    x0, y0, x1, y1 = f.getbbox(text)
    return x1 - x0, y1 - y0


def draw_text(img, x, y, text, font, size, fill):
    """Draw `text` with the top-left of its ink at (x, y)."""
    text = _case(font, text)
    d = ImageDraw.Draw(img)
    if font == "px5x7":
        s = size // 7
        for k, ch in enumerate(text):
            _mark(ch, (x + k * 6 * s, y, x + (k * 6 + 5) * s - 1, y + 7 * s - 1))
            for r, row in enumerate(PX5X7[ch].split()):
                bits = int(row, 16)
                for c in range(5):
                    if bits >> (4 - c) & 1:
                        x0, y0 = x + (k * 6 + c) * s, y + r * s
                        d.rectangle([x0, y0, x0 + s - 1, y0 + s - 1], fill=fill)
    elif font == "seg7":
        w, h, t = size // 2 + 1, size, 1 if size < 12 else 2
        m = h // 2
        for k, ch in enumerate(text):
            x0 = x + k * (w + 2)
            _mark(ch, (x0, y, x0 + w - 1, y + h - 1))
            seg = {"a": (x0, y, x0 + w - 1, y + t - 1), "d": (x0, y + h - t, x0 + w - 1, y + h - 1),
                   "g": (x0, y + m - t // 2, x0 + w - 1, y + m - t // 2 + t - 1),
                   "f": (x0, y, x0 + t - 1, y + m), "b": (x0 + w - t, y, x0 + w - 1, y + m),
                   "e": (x0, y + m, x0 + t - 1, y + h - 1), "c": (x0 + w - t, y + m, x0 + w - 1, y + h - 1)}
            for s in SEG7[ch]:
                d.rectangle(seg[s], fill=fill)
    else:
        f = _pil_font() if font == "pilfont" else _aileron(size)
        x0, y0, _, y1 = f.getbbox(text)
        for k, ch in enumerate(text):                       # each glyph's span from the advance widths
            _mark(ch, (x + f.getlength(text[:k]) - x0, y, x + f.getlength(text[:k + 1]) - x0 - 1, y + y1 - y0 - 1))
        d.text((x - x0, y - y0), text, font=f, fill=fill)


def _pick_font(task, gen, texts, max_w, max_h, rng):
    """A font of the generator that can write every one of `texts`, and one of its sizes at which each fits in
    max_w x max_h."""
    fonts = [f for f in TEXT_FONTS[task][gen] if all(supports(f, t) for t in texts)]
    font = fonts[int(rng.integers(len(fonts)))]
    fits = [s for s in TEXT_FONTS[task][gen][font] if all(text_box(t, font, s)[0] <= max_w and text_box(t, font, s)[1] <= max_h
                                               for t in texts)]
    assert fits, (task, gen, texts, font)
    return font, int(fits[int(rng.integers(len(fits)))])


# ------------------------------------------------------------------------------------------------ backgrounds, shapes
def background(name, rng):
    n = ACL_IMG
    if name == "flat":
        arr = np.broadcast_to(rng.integers(0, 45, 3), (n, n, 3)).astype(np.int64)
    elif name == "noise":
        arr = rng.integers(10, 45, 3)[None, None] + rng.integers(-12, 13, (n, n, 3))
    elif name == "gradient":
        top, bottom = rng.integers(50, 131, 3), rng.integers(50, 131, 3)
        t = np.linspace(0, 1, n)[:, None, None]
        arr = np.broadcast_to(top * (1 - t) + bottom * t, (n, n, 3)).round().astype(np.int64)
    else:                                                   # stripes: diagonal bands of two mid tones
        c1 = rng.integers(50, 106, 3)
        yy, xx = np.mgrid[0:n, 0:n]
        arr = np.where((((xx + yy) // 4) % 2 == 0)[..., None], c1, c1 + 25)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _bright(rng):
    return tuple(int(v) for v in rng.integers(190, 256, 3))


def draw_shape(d, kind, cx, cy, r, rgb):
    _mark(f"{COLOUR_OF[rgb]} {kind}", (cx - r, cy - r, cx + r, cy + r))
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif kind == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=rgb)


def _choice(rng, seq):
    return seq[int(rng.integers(len(seq)))]


# ------------------------------------------------------------------------------------------------ abilities
def _ocr(gen, rng, render):
    text = _choice(rng, OCR_WORDS) if rng.random() < 0.6 else _choice(rng, NUMS)
    layout, bg = _choice(rng, LAYOUTS["acl-ocr"][gen]), _choice(rng, BACKGROUNDS[gen])
    pad = {"centre": 4, "scatter": 4, "sign": 10, "corner": 8}[layout]
    font, size = _pick_font("acl-ocr", gen, [text], ACL_IMG - 2 * pad, ACL_IMG // 2, rng)
    q = _choice(rng, PHRASINGS["acl-ocr"][gen]["read"])
    img = None
    if render:
        img = background(bg, rng)
        d = ImageDraw.Draw(img)
        w, h = text_box(text, font, size)
        if layout == "centre":
            x, y = (ACL_IMG - w) // 2 + int(rng.integers(-3, 4)), (ACL_IMG - h) // 2 + int(rng.integers(-3, 4))
            draw_text(img, x, y, text, font, size, _bright(rng))
        elif layout == "scatter":
            x, y = int(rng.integers(pad, ACL_IMG - pad - w + 1)), int(rng.integers(pad, ACL_IMG - pad - h + 1))
            draw_text(img, x, y, text, font, size, _bright(rng))
        elif layout == "sign":                              # a light plate with a border on a post, dark ink
            x, y = int(rng.integers(pad, ACL_IMG - pad - w + 1)), int(rng.integers(pad, ACL_IMG - pad - h - 8 + 1))
            plate = tuple(int(v) for v in rng.integers(170, 231, 3))
            d.rectangle([x + w // 2 - 1, y + h + 4, x + w // 2 + 1, ACL_IMG - 1], fill=(90, 70, 50))
            d.rectangle([x - 4, y - 4, x + w + 3, y + h + 3], fill=plate, outline=tuple(v // 2 for v in plate))
            draw_text(img, x, y, text, font, size, tuple(int(v) for v in rng.integers(0, 41, 3)))
        else:                                               # corner: bright ink, underlined, near a corner
            right, low = rng.random() < 0.5, rng.random() < 0.5
            x = ACL_IMG - 4 - w if right else 4
            y = ACL_IMG - 7 - h if low else 4
            ink = _bright(rng)
            draw_text(img, x, y, text, font, size, ink)
            d.line([(x, y + h + 2), (x + w - 1, y + h + 2)], fill=ink)
    style = {"font": font, "size": f"text-{size}", "layout": layout, "background": bg, "phrasing": q}
    return img, "read", q, text, style, {"text": text}


def _math(gen, rng, render):
    qtype = _choice(rng, ["arith", "arith", "compare", "bars"])
    bg = _choice(rng, BACKGROUNDS[gen])
    q = _choice(rng, PHRASINGS["acl-math"][gen][qtype])
    if qtype == "bars":
        layout = "bars-plain" if gen == "train" else "bars-axes"
        width = int(_choice(rng, BAR_WIDTHS[gen]))
        n = int(rng.integers(3, 5))
        names = [str(c) for c in rng.permutation(list(COLOURS))[:n]]
        others = rng.integers(8, 41, n)
        top = int(rng.integers(n))
        heights = [int(h) for h in others]
        heights[top] = int(rng.integers(max(h for i, h in enumerate(heights) if i != top) + 6, 53))
        img = None
        if render:
            img = background(bg, rng)
            d = ImageDraw.Draw(img)
            if layout == "bars-plain":
                step = (ACL_IMG - 8) // n
                x0s = [4 + i * step + (step - width) // 2 for i in range(n)]
                base = 58
            else:                                           # axes, a light grid, thin bars from the axis
                base = 56
                for gy in range(base - 10, 4, -10):
                    d.line([(8, gy), (ACL_IMG - 3, gy)], fill=(150, 150, 150))
                d.line([(7, 3), (7, base)], fill=(235, 235, 235))
                d.line([(7, base), (ACL_IMG - 2, base)], fill=(235, 235, 235))
                step = int(rng.integers(11, 14))
                x0s = [11 + i * step for i in range(n)]
            for x0, h, c in zip(x0s, heights, names):
                d.rectangle([x0, base - h, x0 + width - 1, base - 1], fill=COLOURS[c])
                _mark(f"{c} bar", (x0, base - h, x0 + width - 1, base - 1))
        style = {"size": f"bar-{width}", "layout": layout, "background": bg, "phrasing": q}
        return img, qtype, q, names[top], style, {"bars": names, "top": names[top]}
    if qtype == "arith":
        a, b = int(rng.integers(0, 10)), int(rng.integers(0, 10))
        op = "+" if rng.random() < 0.5 else "-"
        if op == "-" and a < b:
            a, b = b, a
        answer = str(a + b if op == "+" else a - b)
    else:
        a, b = (int(v) for v in rng.choice(19, 2, replace=False))
        op = ">" if rng.random() < 0.5 else "<"
        answer = "yes" if (a > b) == (op == ">") else "no"
    if gen == "train":
        layout = _choice(rng, ["inline", "inline-shifted"])
        lines = [f"{a}{op}{b}"]
    else:
        layout = _choice(rng, ["equation", "column"] if qtype == "arith" else ["equation"])
        lines = [f"{a} {op} {b} = ?"] if qtype == "arith" and layout == "equation" else \
            [f"{a} {op} {b}"] if layout == "equation" else [str(a), f"{op} {b}"]
    font, size = _pick_font("acl-math", gen, lines, ACL_IMG - 8, (ACL_IMG - 12) // len(lines), rng)
    img = None
    if render:
        img = background(bg, rng)
        ink = _bright(rng)
        boxes = [text_box(s, font, size) for s in lines]
        w, h = max(b[0] for b in boxes), boxes[0][1]
        if layout == "inline":
            x, y = (ACL_IMG - w) // 2 + int(rng.integers(-2, 3)), (ACL_IMG - h) // 2 + int(rng.integers(-2, 3))
        elif layout == "inline-shifted":
            x, y = int(rng.integers(4, ACL_IMG - 4 - w + 1)), int(rng.integers(4, ACL_IMG - 4 - h + 1))
        else:
            x, y = (ACL_IMG - w) // 2, int(rng.integers(6, 12)) if layout == "column" else (ACL_IMG - h) // 2
        for k, (s, (sw, sh)) in enumerate(zip(lines, boxes)):
            draw_text(img, x + w - sw if layout == "column" else x, y + k * (h + 4), s, font, size, ink)
        if layout == "column":                              # the rule under the sum
            yl = y + len(lines) * (h + 4)
            ImageDraw.Draw(img).line([(x - 2, yl), (x + w + 1, yl)], fill=ink)
    style = {"font": font, "size": f"text-{size}", "layout": layout, "background": bg, "phrasing": q}
    return img, qtype, q, answer, style, {"a": str(a), "op": op, "b": str(b)}


def _spots(rng, k, r, gen):
    """k non-overlapping object centres: scattered (train) or in the cells of a 3 x 3 grid (test)."""
    if gen == "train":
        pts = []
        while len(pts) < k:
            p = (int(rng.integers(r + 2, ACL_IMG - r - 2)), int(rng.integers(r + 2, ACL_IMG - r - 2)))
            if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= (2 * r + 3) ** 2 for q in pts):
                pts.append(p)
        return pts
    cells = rng.choice(9, k, replace=False)
    return [(11 + 21 * int(c % 3) + int(rng.integers(-3, 4)), 11 + 21 * int(c // 3) + int(rng.integers(-3, 4)))
            for c in cells]


def _vp(gen, rng, render):
    qtype = "count" if rng.random() < 0.5 else "spatial"
    bg = _choice(rng, BACKGROUNDS[gen])
    r = int(_choice(rng, OBJECT_RADII[gen]))
    kinds = [str(k) for k in rng.permutation(KINDS)]
    templates = PHRASINGS["acl-vp"][gen][qtype]
    q = _choice(rng, templates)
    if qtype == "count":
        layout = "scatter" if gen == "train" else "rows"
        n, m = int(rng.integers(1, 6)), int(rng.integers(0, 3))
        objs = [(kinds[0], _choice(rng, list(COLOURS))) for _ in range(n)] + \
               [(kinds[1], _choice(rng, list(COLOURS))) for _ in range(m)]
        spots = _spots(rng, n + m, r, gen)
        instruction, answer = q.format(kind=kinds[0]), str(n)
        info = {"count": n, "kind": kinds[0], "others": m, "other": kinds[1]}
    else:
        layout = "pair-near" if gen == "train" else "pair-far"
        rel = _choice(rng, RELATIONS)
        ca, cb = (str(c) for c in rng.choice(list(COLOURS), 2))
        objs = [(kinds[0], ca), (kinds[1], cb)]
        dist = int(rng.integers(14, 23) if gen == "train" else rng.integers(26, 41))
        side = int(rng.integers(-3, 4) if gen == "train" else rng.integers(-6, 7))
        dx, dy = {"left": (-dist, side), "right": (dist, side), "above": (side, -dist), "below": (side, dist)}[rel]
        lo, hi = r + 2, ACL_IMG - r - 3
        bx = int(rng.integers(max(lo, lo - dx), min(hi, hi - dx) + 1))
        by = int(rng.integers(max(lo, lo - dy), min(hi, hi - dy) + 1))
        spots = [(bx + dx, by + dy), (bx, by)]
        instruction, answer = q.format(a=f"{ca} {kinds[0]}", b=f"{cb} {kinds[1]}"), rel
        info = {"a": f"{ca} {kinds[0]}", "b": f"{cb} {kinds[1]}", "relation": rel}
    img = None
    if render:
        img = background(bg, rng)
        d = ImageDraw.Draw(img)
        for (kind, colour), (x, y) in zip(objs, spots):
            draw_shape(d, kind, x, y, r, COLOURS[colour])
    style = {"size": f"obj-{r}", "layout": layout, "background": bg, "phrasing": q}
    return img, qtype, instruction, answer, style, info


def _buttons(layout):
    """Button boxes (x0, y0, x1, y1) of a screen layout, in reading order."""
    if layout in ("grid", "grid-titled"):
        ys = [(6, 30), (34, 58)] if layout == "grid" else [(14, 35), (39, 60)]
        return [(x0, y0, x1, y1) for y0, y1 in ys for x0, x1 in [(4, 31), (33, 60)]]
    x0, x1 = (5, 58) if layout == "list" else (3, 38)             # list: full width; sidebar: a pane beside it
    return [(x0, 3 + 15 * i, x1, 16 + 15 * i) for i in range(4)]


def _pointer(d, x, y, gen):
    """A mouse arrow with its tip at (x, y): white (train), black with a white outline (test)."""
    pts = [(0, 0), (0, 8), (2, 6), (4, 9), (5, 8), (3, 5), (6, 5)]
    poly = [(x + px, y + py) for px, py in pts]
    _mark("pointer", (x, y, x + 6, y + 9))
    if gen == "train":
        d.polygon(poly, fill=(245, 245, 245))
    else:
        d.polygon(poly, fill=(10, 10, 10), outline=(250, 250, 250))


def _gui(gen, rng, render):
    qtype = "pointer" if rng.random() < 0.5 else "selected"
    layout, bg = _choice(rng, LAYOUTS["acl-gui"][gen]), _choice(rng, BACKGROUNDS[gen])
    words = [str(w) for w in rng.choice(GUI_WORDS, 4, replace=False)]
    boxes = _buttons(layout)
    max_w = min(x1 - x0 - 3 for x0, _, x1, _ in boxes)
    max_h = min(y1 - y0 - 1 for _, y0, _, y1 in boxes)
    font, size = _pick_font("acl-gui", gen, words, max_w, max_h, rng)
    selected, pointed = int(rng.integers(4)), int(rng.integers(4))
    target = words[selected if qtype == "selected" else pointed]
    order = [str(w) for w in rng.permutation(words)]
    fmt = OPTION_FORMATS[gen]
    q = _choice(rng, PHRASINGS["acl-gui"][gen][qtype])
    instruction = q + " " + " ".join(fmt.format(letter=LETTERS[i], word=w) for i, w in enumerate(order))
    answer = LETTERS[order.index(target)]
    img = None
    if render:
        img = background(bg, rng)
        d = ImageDraw.Draw(img)
        if gen == "train":                                  # dark theme, accent-filled selection
            window, face, ink, sel = (45, 48, 55), (80, 84, 92), (235, 235, 235), (40, 100, 210)
        else:                                               # mid theme, orange-framed selection, dark ink
            window, face, ink, sel = (120, 124, 130), (185, 188, 192), (20, 20, 25), (235, 140, 40)
        d.rectangle([1, 1, ACL_IMG - 2, ACL_IMG - 2], fill=window)
        if layout == "grid-titled":
            d.rectangle([1, 1, ACL_IMG - 2, 9], fill=(60, 90, 150))
            for k in range(3):
                d.rectangle([ACL_IMG - 8 - 5 * k, 4, ACL_IMG - 6 - 5 * k, 6], fill=(200, 200, 200))
        if layout == "sidebar":                             # a content pane with lines of "text"
            d.rectangle([41, 4, ACL_IMG - 4, ACL_IMG - 4], fill=(150, 154, 160))
            for k in range(6):
                d.line([(44, 9 + 8 * k), (44 + int(rng.integers(6, 14)), 9 + 8 * k)], fill=(90, 90, 95))
        for k, (w, (x0, y0, x1, y1)) in enumerate(zip(words, boxes)):
            if gen == "train":
                d.rectangle([x0, y0, x1, y1], fill=sel if k == selected else face, outline=(120, 124, 132))
            else:
                d.rectangle([x0, y0, x1, y1], fill=face, outline=sel if k == selected else (95, 98, 104),
                            width=2 if k == selected else 1)
            if k == selected:
                _mark("selected", (x0, y0, x1, y1))
            tw, th = text_box(w, font, size)
            tx = (x0 + x1 + 1 - tw) // 2 if gen == "train" else x0 + 4
            draw_text(img, tx, (y0 + y1 + 1 - th) // 2, w, font, size, ink)
        x0, y0, x1, y1 = boxes[pointed]
        _pointer(d, int(rng.integers(x0 + 2 * (x1 - x0) // 3, x1 - 2)), int(rng.integers(y0 + 2, y1 - 3)), gen)
    style = {"font": font, "size": f"text-{size}", "layout": layout, "background": bg, "phrasing": q,
             "options": fmt}
    return img, qtype, instruction, answer, style, {"words": words, "selected": words[selected],
                                                    "pointed": words[pointed]}


ABILITIES = {"acl-ocr": _ocr, "acl-math": _math, "acl-vp": _vp, "acl-gui": _gui}


def make_example(task, gen, rng, render=True):
    """One draw of `task`'s generator `gen` ("train" or "test"): (image or None, instruction, answer, metric,
    style). render=False draws the question and answer only (for a text corpus)."""
    img, qtype, instruction, answer, style, _ = ABILITIES[task](gen, rng, render)
    return img, instruction, answer, RULES[(task, qtype)], style


# ------------------------------------------------------------------------------------------------ for the acl base
# What the acl base's encoder and aligned projectors learn from (never a benchmark item: their own seeds): each
# picture captioned with what it shows, and labelled per attribute for the ViT's pretraining heads.
OPS = ["+", "-", ">", "<"]
OP_WORDS = {"+": "plus", "-": "minus", ">": "greater than", "<": "less than"}
# Every label is read off the picture alone (the question is not shown to the ViT): how many objects of EACH kind,
# and where the pair's earlier kind (KINDS order) lies relative to the other, not the count / relation asked about.
LABELS = ["ability", "text", "a", "op", "b", "top"] + [f"{k}s" for k in KINDS] + ["relation", "selected", "pointed"]
LABEL_CLASSES = [len(ORDER), len(ANSWERS["acl-ocr"]), len(NUMS), len(OPS), len(NUMS), len(COLOURS)] + \
                [len(COUNTS) + 1] * len(KINDS) + [len(RELATIONS), len(GUI_WORDS), len(GUI_WORDS)]   # classes per head
PATCH_MARKS = (["none"] + list("abcdefghijklmnopqrstuvwxyz0123456789+-<>=?") +
               [f"{c} {k}" for c in COLOURS for k in KINDS] + [f"{c} bar" for c in COLOURS] + ["pointer", "selected"])
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def caption(task, qtype, info):
    """A plain description of an ability's picture (LLaVA stage-1 style: what is shown, not the question)."""
    if task == "acl-ocr":
        return f"the text {info['text']}"
    if qtype == "bars":
        return f"bars {' '.join(info['bars'])} , tallest {info['top']}"
    if task == "acl-math":
        return f"{info['a']} {OP_WORDS[info['op']]} {info['b']}"
    if qtype == "count":
        return f"{info['count']} {info['kind']}s and {info['others']} {info['other']}s"
    if qtype == "spatial":
        return f"{info['a']} {info['relation']} {info['b']}"
    return f"buttons {' '.join(info['words'])} , {info['selected']} selected , pointer on {info['pointed']}"


def describe(task, gen, rng):
    """(image, caption, labels, patch labels): one picture of `task`'s generator `gen` for the acl base (labels:
    LABELS order; patch labels: patch_labels())."""
    global _MARKS
    _MARKS = []
    try:
        img, qtype, _, _, _, info = ABILITIES[task](gen, rng, True)
        marks = _MARKS
    finally:
        _MARKS = None
    lab = dict.fromkeys(LABELS, -1)
    lab["ability"] = ORDER.index(task)
    if task == "acl-ocr":
        lab["text"] = ANSWERS["acl-ocr"].index(info["text"])
    elif qtype == "bars":
        lab["top"] = list(COLOURS).index(info["top"])
    elif task == "acl-math":
        lab.update(a=int(info["a"]), op=OPS.index(info["op"]), b=int(info["b"]))
    elif task == "acl-vp":
        shown = [o.split()[-1] for o in (info["a"], info["b"])] if qtype == "spatial" else \
            [info["kind"]] * info["count"] + [info["other"]] * info["others"]
        lab.update({f"{k}s": shown.count(k) for k in KINDS})
        if qtype == "spatial":
            first = KINDS.index(shown[0]) < KINDS.index(shown[1])
            lab["relation"] = RELATIONS.index(info["relation"] if first else OPPOSITE[info["relation"]])
    else:
        lab.update(selected=GUI_WORDS.index(info["selected"]), pointed=GUI_WORDS.index(info["pointed"]))
    return img, caption(task, qtype, info), [lab[k] for k in LABELS], patch_labels(marks)


def patch_labels(marks, patch=8):
    """(ACL_IMG // patch)^2 ints in reading order: what covers each patch most (PATCH_MARKS index; later drawn
    wins where marks overlap; 0: none covers a quarter of the patch). A dense label that keeps each image token
    about its own place: the glyph, object, bar, pointer or selection under it."""
    owner = np.zeros((ACL_IMG, ACL_IMG), dtype=np.int64)
    for name, (x0, y0, x1, y1) in marks:
        if not name.strip():                                # the space between glyphs marks nothing
            continue
        owner[max(0, y0):max(0, y1 + 1), max(0, x0):max(0, x1 + 1)] = PATCH_MARKS.index(name.lower())
    g = ACL_IMG // patch
    cells = owner.reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g * g, patch * patch)   # (patches, px)
    counts = np.stack([np.bincount(c, minlength=len(PATCH_MARKS)) for c in cells])
    counts[:, 0] = 0
    return [int(k) if counts[i, k] >= patch * patch // 4 else 0 for i, k in enumerate(counts.argmax(1))]


# ------------------------------------------------------------------------------------------------ for the tiny base
def split_words(s):
    return re.findall(r"\w+|[^\w\s]+", s)      # the tokenizer's word split (data/generate.py _split_words)


def acl_vocabulary():
    """Every word an acl instruction, answer or caption can hold (both generators) and its task names: what the acl
    base's vocabulary adds to vocabulary() (data/base.py)."""
    words = set()
    for t in ORDER:
        words |= set(split_words(t)) | {w for a in ANSWERS[t] for w in split_words(a)}
        for g in ("train", "test"):
            for ts in PHRASINGS[t][g].values():
                for tpl in ts:
                    words |= set(split_words(tpl.format(kind="", a="", b="")))
    words |= set(KINDS) | {k + "s" for k in KINDS} | set(COLOURS) | set(GUI_WORDS) | set(LETTERS)
    for fmt in OPTION_FORMATS.values():
        words |= set(split_words(fmt.format(letter="A", word="save")))
    words |= {"the", "text", "bars", ",", "tallest", "and", "buttons", "selected", "pointer", "on"}   # captions
    words |= {w for o in OP_WORDS.values() for w in o.split()}
    return sorted(words)


def acl_text_pairs(seed=12345, n_per_task=400):
    """(task, instruction, answer) drawn by the TRAIN generators without images, for the acl base's text corpus
    (as text_corpus() draws the other tasks: the words and answer formats, never what an image shows)."""
    out = []
    for k, t in enumerate(ORDER):
        rng = np.random.default_rng([seed, 7001 + k])
        for _ in range(n_per_task):
            _, q, a, _, _ = make_example(t, "train", rng, render=False)
            out.append((t, q, a))
    return out


def acl_captions(seed=12346, n_per_task=200):
    """Captions (caption()) drawn by the TRAIN generators without images, for the acl base's text corpus: the LLM
    knows how a description of these pictures reads (as text_corpus() holds the other worlds' captions), so stage-1
    alignment has only to make the projector say which one."""
    out = []
    for k, t in enumerate(ORDER):
        rng = np.random.default_rng([seed, 7101 + k])
        for _ in range(n_per_task):
            _, qtype, _, _, _, info = ABILITIES[t]("train", rng, False)
            out.append(caption(t, qtype, info))
    return out
