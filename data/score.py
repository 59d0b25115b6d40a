"""How a prediction is scored: each benchmark's own rule, the official VQA answer processing, coco-caption's tokens.

Every sample is scored by one rule (0-100 per sample; a task's score is the mean over its samples):

    exact     the prediction, after VQA answer processing, equals one of the answers (after the same processing)
    contains  the processed answer occurs, as whole words, in the processed prediction (MLLM-CL's RS, Med, AD,
              OCRBench, CV-Bench count: their scripts test `answer.lower() in prediction.lower()`)
    vqa       VQA accuracy as MoInCL scores OK-VQA / Clotho-AQA: min(1, #annotators who gave the prediction / 3)
    letter    multiple choice: the option letter the prediction starts with ("B", "(B)", "B.", "B: ...") equals the
              answer's letter (MMT-Bench, MLLM-CL's GUI test)
    cider     CIDEr-D on coco-caption's tokens, on the papers' scale: 100 x pycocoevalcap's CIDEr-D (a COCO model's
              1.20 is printed "120")
    cider10   the same CIDEr-D on the synthetic benchmark's scale, 10 x pycocoevalcap's (a caption equal to its one
              reference scores about 100): a `cider10` figure is a tenth of the `cider` one for the same captions

A manifest line may name its rule (`"metric": "contains"`); the converters set each benchmark's. Without one, a
sample is scored as before rules existed: QA with annotators `vqa`, other QA `exact`, captions `cider10`.

VQA answer processing (the official evaluation script's rules, GT-Vision-Lab/VQA vqaEval.py, re-written here):
  1. newlines / tabs -> spaces, strip
  2. punctuation ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! : removed where it touches a space or the text holds a
     digit,digit comma ("1,000" -> "1000"), else turned into a space ("black-and-white" -> "black and white");
     other characters (: % & ' # ...) are kept ("50%" != "50", "red:" != "red")
  3. a period not followed by a digit is removed ("3.5" keeps its point)
  4. lower-case, split on spaces, number words zero..ten and "none" -> digits, articles a / an / the dropped
  5. apostrophe-less contractions restored ("dont" -> "don't"), words joined by one space
Deviations: a text that is one letter after step 3 is kept as that letter (step 4 would drop "a" as an article,
and multiple-choice answers are letters); both prediction and answers are always processed (the script does so
only where annotators disagree, since the VQA release's answers are already in processed form).
"""
import math
import re

RULES = ("exact", "contains", "vqa", "letter", "cider", "cider10")
SCALE = {"cider": "CIDEr-D x 100 (papers' scale)", "cider10": "CIDEr-D x 10 (0-100)",
         "exact": "VQA-processed exact match", "contains": "VQA-processed answer in prediction",
         "vqa": "VQA accuracy", "letter": "option letter"}


def default_rule(sample):
    """The rule of a sample whose manifest names none (the scoring before per-task rules)."""
    return "cider10" if sample.answers is None else ("vqa" if sample.annotators else "exact")


def rule_of(sample):
    return getattr(sample, "metric", None) or default_rule(sample)


# ================================================================================================== VQA processing
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")             # a period not followed by a digit
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# The official table maps a contraction written without its apostrophes (or with only some of them) to the
# contraction. It is these forms, each reachable from every variant that drops one or more apostrophes:
_CONTRACTED = """ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll ma'am mightn't mightn't've might've
mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've
somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've
something'll that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't
we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's
who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll
you're you've""".split()
# the table's few irregular entries: "somebody'd" maps the wrong way round, "let's" / "she's" map to themselves
_IRREGULAR = {"somebody'd": "somebodyd"}
_NO_VARIANTS = {"i'd've", "i'm", "i've"}     # the table writes these with a capital I, which lower-cased text never has


def _variants(word):
    """Every spelling of `word` with one or more of its apostrophes left out."""
    parts = word.split("'")
    out = set()
    for mask in range(1, 2 ** (len(parts) - 1)):       # bit k set: apostrophe k is dropped
        s = parts[0]
        for k, p in enumerate(parts[1:]):
            s += ("" if mask >> k & 1 else "'") + p
        out.add(s)
    return out


CONTRACTIONS = {v: w for w in _CONTRACTED if w not in _NO_VARIANTS for v in _variants(w)} | _IRREGULAR


def process_punctuation(text):
    """Step 2 and 3 above."""
    out, strip_all = text, _COMMA_DIGITS.search(text) is not None
    for p in _PUNCT:
        out = out.replace(p, "" if (p + " " in text or " " + p in text or strip_all) else " ")
    return _PERIOD.sub("", out)


def process_digit_article(text):
    """Step 4 and 5 above."""
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(s):
    """The official VQA answer processing (steps 1-5), a lone letter kept as a letter."""
    s = process_punctuation(s.replace("\n", " ").replace("\t", " ").strip())
    if len(s.strip()) == 1 and s.strip().isalpha():
        return s.strip().lower()
    return process_digit_article(s)


_LETTER = re.compile(r"\s*\(?([A-Z])\)?(?:$|[\s.:,)])")


def choice_letter(s):
    """The option letter a multiple-choice prediction gives: "B", "b", "(B)", "B.", "B) ...", "B: ..."; else None."""
    if len(s.strip()) == 1 and s.strip().isalpha():
        return s.strip().upper()
    m = _LETTER.match(s)
    return m.group(1) if m else None


def exact_score(pred, answers):
    return 100.0 * (normalize_answer(pred) in {normalize_answer(a) for a in answers})


def contains_score(pred, answers):
    p = f" {normalize_answer(pred)} "
    return 100.0 * any(a and f" {a} " in p for a in map(normalize_answer, answers))


def vqa_accuracy(pred, annotators):
    """acc = 100 * min(1, #annotators whose processed answer equals the processed prediction / 3). The official
    script averages this over the 10 ways of leaving one annotator out; the two differ by at most 10 points a sample."""
    p = normalize_answer(pred)
    return 100.0 * min(1.0, sum(normalize_answer(a) == p for a in annotators) / 3)


def letter_score(pred, answers):
    got = choice_letter(pred)
    return 100.0 * (got is not None and got in {choice_letter(a) for a in answers})


# ================================================================================================== captions
_OPEN = {"(": "-lrb-", "[": "-lsb-", "{": "-lcb-"}
_CLOSE = {")": "-rrb-", "]": "-rsb-", "}": "-rcb-"}
_CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
_ABBREV = {"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "prof.", "etc.", "vs.", "inc.", "ltd.", "co.", "corp.",
           "mt.", "ft.", "no.", "jan.", "feb.", "aug.", "sept.", "oct.", "nov.", "dec."}
# coco-caption drops these tokens after PTB tokenisation; its list names the bracket tokens in upper case, so the
# lower-cased "-lrb-" etc. it actually gets stay in as words, as here
_DROP = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"}


def _split_word(w):
    """One whitespace-separated chunk -> PTB tokens (before lower-casing and dropping punctuation)."""
    head, tail = [], []
    while w and (w[0] in "\"`([{$#~" or (w[0] == "'" and len(w) > 1 and w[1:2].isalpha()
                                             and not w.lower().startswith(("'s", "'re", "'ve", "'ll", "'d", "'m")))):
        head.append(_OPEN.get(w[0], "``" if w[0] == '"' else w[0]))
        w = w[1:]
    while w:
        if w.endswith("..."):
            tail.insert(0, "...")
            w = w[:-3]
        elif w[-1] in "\",;:?!)]}%'":
            if w[-1] == "'" and w[:-1].lower().endswith("s") and len(w) > 2:   # plural possessive: dogs' -> dogs '
                tail.insert(0, "'")
            else:
                tail.insert(0, _CLOSE.get(w[-1], "''" if w[-1] == '"' else w[-1]))
            w = w[:-1]
        elif w[-1] == "." and len(w) > 1 and not (w.lower() in _ABBREV or "." in w[:-1]):
            tail.insert(0, ".")
            w = w[:-1]
        else:
            break
    mid = []
    if w:
        while True:                                   # clitics, stacked ones too: I'd've -> I 'd 've
            c = next((c for c in _CLITICS if w.lower().endswith(c) and len(w) > len(c)), None)
            if c is None:
                break
            mid.insert(0, w[-len(c):])
            w = w[:-len(c)]
        mid.insert(0, w)
        # symbols PTB splits off inside a word: + and =, and & between lower-case letters (AT&T stays whole)
        mid = [t for m in mid for t in re.split(r"([+=]|(?<=[a-z])&(?=[a-z]))", m) if t]
    return head + mid + tail


def ptb_tokenize(s):
    """coco-caption's caption tokens: Stanford PTBTokenizer (-preserveLines -lowerCase) as its pipeline runs it, then
    its punctuation tokens dropped. Re-written in Python for the cases captions hold (checked against the original
    on punctuated captions: docs/scoring.md)."""
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    toks = [t for w in s.split() for t in _split_word(w)]
    return [t.lower() for t in toks if t not in _DROP]


def _ngrams(words, n):
    out = {}
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            g = tuple(words[i:i + k])
            out[g] = out.get(g, 0) + 1
    return out


def cider_d(cands, refs, n=4, sigma=6.0, scale=100.0, tokenize=ptb_tokenize):
    """CIDEr-D (Vedantam et al. 2015, as in coco-caption), per sample, `scale` x raw (raw <= 1 against one
    reference; pycocoevalcap gives 10 x raw, the papers print 1000 x raw, the synthetic tables 100 x raw).

        g^n(x) = tf-idf vector of x's n-grams, idf from the document frequency over all references (of this set)
        CIDEr-D_n(c, S) = 1/|S| sum_s  exp(-(l_c - l_s)^2 / (2 sigma^2)) * <min(g^n(c), g^n(s)), g^n(s)> / (|g^n(c)| |g^n(s)|)
        raw(c, S)       = 1/4 sum_{n=1..4} CIDEr-D_n(c, S)
    """
    ref_ng = [[_ngrams(tokenize(r), n) for r in rs] for rs in refs]
    df = {}
    for rs in ref_ng:
        for g in set().union(*[set(r) for r in rs]):
            df[g] = df.get(g, 0) + 1
    log_n = math.log(float(len(refs)))

    def vec(counts):
        v, norm = [{} for _ in range(n)], [0.0] * n
        for g, tf in counts.items():
            k = len(g) - 1
            v[k][g] = tf * (log_n - math.log(max(1.0, df.get(g, 0.0))))
            norm[k] += v[k][g] ** 2
        return v, [math.sqrt(x) for x in norm], sum(tf for g, tf in counts.items() if len(g) == 1)

    scores = []
    for c, rs in zip(cands, ref_ng):
        vc, nc, lc = vec(_ngrams(tokenize(c), n))
        total = 0.0
        for r in rs:
            vr, nr, lr = vec(r)
            sim = 0.0
            for k in range(n):
                val = sum(min(x, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, x in vc[k].items())
                if nc[k] != 0 and nr[k] != 0:
                    val /= nc[k] * nr[k]
                sim += val * math.exp(-((lc - lr) ** 2) / (2 * sigma ** 2))
            total += sim / n
        scores.append(scale * total / len(rs))
    return scores


# ================================================================================================== per sample, per task
_QA = {"exact": exact_score, "contains": contains_score, "letter": letter_score,
       "vqa": lambda p, s: vqa_accuracy(p, s)}


def score_samples(samples, preds):
    """Per-sample scores (0-100, each by its sample's rule). Captions of both scales share one idf (the set's
    references)."""
    scores = [None] * len(samples)
    caps = []
    for i, (s, p) in enumerate(zip(samples, preds)):
        rule = rule_of(s)
        if rule in ("cider", "cider10"):
            caps.append(i)
        else:
            scores[i] = _QA[rule](p, s.annotators if rule == "vqa" else s.answers)
    if caps:
        raw = cider_d([preds[i] for i in caps], [samples[i].references or [samples[i].target] for i in caps], scale=1.0)
        for i, r in zip(caps, raw):
            scores[i] = r * (1000.0 if rule_of(samples[i]) == "cider" else 100.0)
    return scores


def score_predictions(samples, preds):
    """Task score: the mean per-sample score."""
    return float(sum(score_samples(samples, preds)) / len(samples))


def task_rule(samples):
    """The rule(s) a task is scored by, as one string ("exact", or "cider10+exact" for a step mixing both)."""
    return "+".join(sorted({rule_of(s) for s in samples}))
