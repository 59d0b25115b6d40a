"""Our CIDEr-D (data/score.py, papers' scale) against pycocoevalcap's with its Java PTB tokenizer, on punctuated
captions in the styles of COCO / Flickr30k, MSR-VTT and AudioCaps (drawn here from templates, seeded).

    pip install --no-deps --target /tmp/coco pycocoevalcap==1.2      # ships the Stanford CoreNLP 3.4.1 jar
    PYTHONPATH=/tmp/coco python tools/check_cider.py                   # needs java on PATH

Prints, per corpus: the share of captions whose tokens equal coco-caption's, and both corpus scores (100 x
pycocoevalcap's CIDEr-D, as papers print it). Only this check needs pycocoevalcap and Java; the project never does.
"""
import os
import random
import re
import string
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.score import cider_d, ptb_tokenize  # noqa: E402

WHO = ["A man", "A woman", "Two kids", "A little girl", "The chef", "A dog", "A brown-and-white dog", "Two men",
       "A young boy", "People", "A group of teenagers", "Someone", "A surfer", "The man's friend", "A cat"]
DOES = ["is riding a wave on top of a surfboard", "sits on a park bench", "holds an umbrella (it's raining)",
        "plays frisbee in the yard", "doesn't want to eat the pizza", "is cutting a 3.5-inch sandwich",
        "walks past a \"STOP\" sign", "stands next to a 1,000-year-old tree", "looks at a 50% off sign",
        "rides a bike down the street", "is cooking in a kitchen", "throws a ball to the dog", "won't leave the beach",
        "waits at the bus stop #42", "is eating breakfast: eggs, toast & coffee", "talks on a cell-phone"]
WHERE = ["", " in the snow", ", near the water", " on a sunny day", " at night", " in front of a building",
         " while others watch", " -- smiling", " (in black and white)", " outside the caf\u00e9"]
END = [".", "", " .", "!", "...", "."]
VIDEO = ["a man is {v} a {o}", "someone {v}s a {o} on stage", "a clip of a woman {v} a {o}, then talking",
         "kids are {v} a {o} in a cartoon", "a person's hands are {v} a {o}"]
VERBS, OBJS = ["playing", "cooking", "showing", "cutting", "driving"], ["guitar", "car", "video game", "tomato", "dog"]
AUDIO = ["A {a} {v}, followed by {b}", "{a} {v} while {b} in the background", "Birds chirp as {a} {v}",
         "{a} {v} and {b}; then silence", "An engine idles, {a} {v} nearby"]
SOUNDS_A, SOUNDS_V = ["man", "woman", "dog", "crowd", "baby"], ["speaks", "barks", "cheers", "cries", "laughs"]
SOUNDS_B = ["a car horn honks", "water pours", "people talk", "wind blows hard", "a door slams"]


def corpus(style, n, rng):
    """n (candidate, references) pairs: the candidate a reference rewritten (dropped / swapped words, other
    punctuation), the 5 references drawn around one scene."""
    out = []
    for _ in range(n):
        if style == "coco":
            who, does = rng.choice(WHO), rng.choice(DOES)
            refs = [f"{rng.choice(WHO) if rng.random() < .3 else who} {does}{rng.choice(WHERE)}{rng.choice(END)}"
                    for _ in range(5)]
        elif style == "msrvtt":
            v, o = rng.choice(VERBS), rng.choice(OBJS)
            refs = [rng.choice(VIDEO).format(v=v if rng.random() < .8 else rng.choice(VERBS), o=o) for _ in range(5)]
        else:
            a, v = rng.choice(SOUNDS_A), rng.choice(SOUNDS_V)
            refs = [rng.choice(AUDIO).format(a=a, v=v, b=rng.choice(SOUNDS_B)).capitalize() for _ in range(5)]
        words = rng.choice(refs).split()
        if len(words) > 3 and rng.random() < .5:
            del words[rng.randrange(len(words))]
        cand = " ".join(words).replace(", ", rng.choice([", ", " ", " , "]))
        out.append((cand.lower() if rng.random() < .5 else cand, refs))
    return out


def main():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    rng = random.Random(0)
    for style in ("coco", "msrvtt", "audiocaps"):
        pairs = corpus(style, 300, rng)
        gts = {i: [{"caption": r} for r in refs] for i, (_, refs) in enumerate(pairs)}
        res = {i: [{"caption": c}] for i, (c, _) in enumerate(pairs)}
        tok = PTBTokenizer()
        gts_t, res_t = tok.tokenize(gts), tok.tokenize(res)
        theirs, _ = Cider().compute_score(gts_t, res_t)
        ours = cider_d([c for c, _ in pairs], [refs for _, refs in pairs], scale=1000.0)
        # the tokens this project used before (every punctuation mark -> a space), for contrast
        naive = cider_d([c for c, _ in pairs], [refs for _, refs in pairs], scale=1000.0,
                        tokenize=lambda t: re.sub(f"[{re.escape(string.punctuation)}]", " ", t.lower()).split())
        same = sum(ptb_tokenize(c) == res_t[i][0].split() for i, (c, _) in enumerate(pairs))
        same += sum(ptb_tokenize(r) == t.split() for i, (_, refs) in enumerate(pairs) for r, t in zip(refs, gts_t[i]))
        total = len(pairs) * 6
        print(f"{style:9s} {len(pairs)} captions x 5 refs: tokens equal {same}/{total}; CIDEr-D x100: ours "
              f"{sum(ours) / len(ours):.2f}, pycocoevalcap+PTB {100 * theirs:.2f}, diff {sum(ours) / len(ours) - 100 * theirs:+.2f} "
              f"(punctuation-as-space tokens: {sum(naive) / len(naive):.2f})")


if __name__ == "__main__":
    main()
