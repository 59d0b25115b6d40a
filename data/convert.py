"""Convert a real dataset, read as its official release lays it out, into this project's task manifests.

    python -m data.convert DATASET --src DIR --out DIR [--skip-missing]

writes `--out/train.jsonl` and `--out/test.jsonl` (format: data/README.md). Media paths are absolute and every
media file is checked to exist; a missing one is an error unless `--skip-missing` drops its samples. Nothing is
written unless the whole conversion succeeds: both manifests go to temp files in `--out`, then replace the old
ones, so on an error `--out` is left as it was (an older manifest stays untouched, no temp file is left).

Datasets and what `--src` must hold (train -> train.jsonl, test -> test.jsonl; other splits are not read):
  flickr30k   dataset_flickr30k.json (Karpathy split: images[].filename, .split train|val|test, .sentences[].raw),
              flickr30k-images/<filename>.  Image captioning.
  okvqa       OpenEnded_mscoco_{train,val}2014_questions.json (questions[].image_id, .question, .question_id),
              mscoco_{train,val}2014_annotations.json (annotations[].question_id, .answers[].answer),
              train2014/COCO_train2014_%012d.jpg, val2014/COCO_val2014_%012d.jpg.  val is the test split.
              Image QA: target = majority answer, answers = distinct answers, annotators = the 10 answers.
  msrvtt      train_val_videodatainfo.json, test_videodatainfo.json (videos[].video_id, .split
              train|validate|test; sentences[].video_id, .caption), TrainValVideo/<video_id>.mp4,
              TestVideo/<video_id>.mp4.  Video captioning.
  msvd-qa     train_qa.json, test_qa.json ([{"answer", "id", "question", "video_id": N}]), youtube_mapping.txt
              (lines `<clip name> vid<N>`), YouTubeClips/<clip name>.avi.  Video QA, one answer.
  audiocaps   train.csv, test.csv (columns audiocap_id,youtube_id,start_time,caption), audio/<split>/<youtube_id>.wav
              (AudioCaps ships no audio; see data/README.md).  Audio captioning.
  clotho-aqa  clotho_aqa_{train,test}.csv (columns file_name,QuestionText,answer,confidence; one row per
              annotator), audio_files/<file_name>.  Audio QA: the rows of one (file, question) are one sample.
  llava       train.json, test.json: lists of LLaVA items {"id", "image", "conversations": [{"from": "human",
              "value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}, one sample per (human, gpt) pair
              (a multi-turn item gives one sample per turn, each without the earlier turns), or MLLM-CL test items
              {"question_id", "image", "text", "answer", ...} (extra keys ignored).  Images relative to --src or
              --image-root.  The `<image>` marker is stripped.  Image QA (MLLM-CL / CoIN domain data).
  alpaca      alpaca_data.json, or --src is the JSON file itself ([{"instruction", "input", "output"}]).  The
              text-only set: the last --test-size items are the test split; --max-words N keeps only items whose
              output has at most N words (filtered before splitting).

Every line names its scoring rule (`metric`, data/score.py) as the benchmark's own evaluation scores it: captions
`cider` (papers' scale), OK-VQA / Clotho-AQA `vqa`, MSVD-QA and alpaca `exact`, llava by MLLM-CL's rule for the
domain / ability its --src folder is named after (RS, Med, AD, OCR, VP: `contains`; Sci, Fin, Math: `exact`; APP:
`letter`), or --metric.

Captioning: instruction `describe the <modality>.`; train has one line per (media, caption), test one line per
media with target = its first caption and references = all of them.  QA with annotators: target = the most
frequent answer after VQA normalisation (ties: first given), as the raw string first given for it.
"""
import argparse
import csv
import json
import os
import sys
import tempfile
from collections import Counter

from data.files import UserError
from data.score import RULES, normalize_answer
from data.generate import caption_instruction


# ------------------------------------------------------------------------------------------------ reading, checking
def src_file(src, name, what):
    path = os.path.join(src, name)
    if not os.path.isfile(path):
        raise UserError(f"{path}: not found (expected {what})")
    return path


def read_json(path, list_of=None):
    """The parsed JSON file; with `list_of` (what an item holds), checked to be a list."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({type(e).__name__})")
    if list_of and not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of {{{list_of}}}, got a {type(data).__name__}")
    return data


def need(rec, key, where, kind=str):
    """rec[key], checked to be a `kind` (a non-empty string by default); `where` names file and record."""
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if key not in rec:
        raise UserError(f"{where}: missing key {key!r}")
    v = rec[key]
    empty = v == [] or (isinstance(v, str) and not v.strip())
    if not isinstance(v, kind) or isinstance(v, bool) or empty:
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise UserError(f"{where}: key {key!r} should be a non-empty {names}, got {json.dumps(v)[:60]}")
    return v


def read_csv(path, columns):
    """Rows of a CSV as dicts, after checking its header holds `columns` and every row has values for them."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise UserError(f"{path}: missing column(s) {', '.join(missing)} (expected columns "
                                f"{','.join(columns)}; header is {','.join(header) or 'empty'})")
            rows = []
            for row in reader:
                if any(not (row.get(c) or "").strip() for c in columns):
                    raise UserError(f"{path}:{reader.line_num}: empty or missing value in column(s) "
                                    f"{', '.join(c for c in columns if not (row.get(c) or '').strip())}")
                rows.append(row)
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot be read as CSV ({type(e).__name__}: {e})")


def vote(answers):
    """The most frequent answer after VQA normalisation (ties: the first given), as its first raw string."""
    counts = Counter(normalize_answer(a) for a in answers)
    best = max(counts, key=counts.get)            # max keeps the first of equal counts (insertion order)
    return next(a for a in answers if normalize_answer(a) == best)


def qa(id_, modality, media, question, target, answers, annotators=None):
    row = {"id": id_, "modality": modality, "media": media, "instruction": question.strip(), "target": target,
           "answers": list(dict.fromkeys(answers))}
    if annotators is not None:
        row["annotators"] = list(annotators)
    return row


def captioning(name, modality, train, test):
    """(key, media, caption) triples -> train rows (one per caption) and test rows (one per media, all captions)."""
    instr = caption_instruction(modality)
    rows = {"train": [], "test": []}
    for split, triples in (("train", train), ("test", test)):
        groups = {}
        for key, media, caption in triples:
            groups.setdefault(key, (media, []))[1].append(caption.strip())
        for key, (media, caps) in groups.items():
            base = {"modality": modality, "media": media, "instruction": instr}
            if split == "train":
                rows[split] += [{"id": f"{name}/{key}/{k}", **base, "target": c} for k, c in enumerate(caps)]
            else:
                rows[split].append({"id": f"{name}/{key}", **base, "target": caps[0], "references": caps})
    return rows["train"], rows["test"]


# ------------------------------------------------------------------------------------------------ datasets
def flickr30k(src, args):
    path = src_file(src, "dataset_flickr30k.json", "the Karpathy split JSON of Flickr30k")
    triples = {"train": [], "test": []}
    for i, im in enumerate(need(read_json(path), "images", path, list)):
        where = f"{path}: images[{i}]"
        split, fn = need(im, "split", where), need(im, "filename", where)
        for k, s in enumerate(need(im, "sentences", where, list)):
            caption = need(s, "raw", f"{where}.sentences[{k}]")
            if split in triples:
                triples[split].append((os.path.splitext(fn)[0], os.path.join(src, "flickr30k-images", fn), caption))
    return captioning("flickr30k", "image", triples["train"], triples["test"])


def okvqa(src, args):
    out = []
    for split in ("train", "val"):
        qpath = src_file(src, f"OpenEnded_mscoco_{split}2014_questions.json", f"OK-VQA's {split} questions")
        apath = src_file(src, f"mscoco_{split}2014_annotations.json", f"OK-VQA's {split} annotations")
        anns = {}
        for i, a in enumerate(need(read_json(apath), "annotations", apath, list)):
            anns[need(a, "question_id", f"{apath}: annotations[{i}]", int)] = (i, a)
        rows = []
        for i, q in enumerate(need(read_json(qpath), "questions", qpath, list)):
            where = f"{qpath}: questions[{i}]"
            qid, image_id = need(q, "question_id", where, int), need(q, "image_id", where, int)
            if qid not in anns:
                raise UserError(f"{apath}: no annotation for question_id {qid} (asked in {qpath})")
            j, ann = anns[qid]
            answers = [need(a, "answer", f"{apath}: annotations[{j}].answers[{k}]")
                       for k, a in enumerate(need(ann, "answers", f"{apath}: annotations[{j}]", list))]
            media = os.path.join(src, f"{split}2014", f"COCO_{split}2014_{image_id:012d}.jpg")
            rows.append(qa(f"okvqa/{qid}", "image", media, need(q, "question", where), vote(answers), answers, answers))
        out.append(rows)
    return tuple(out)


def msrvtt(src, args):
    triples = []
    for name, folder, split in (("train_val_videodatainfo.json", "TrainValVideo", "train"),
                                ("test_videodatainfo.json", "TestVideo", "test")):
        path = src_file(src, name, f"MSR-VTT's {split} annotation JSON")
        data = read_json(path)
        caps = {}
        for i, s in enumerate(need(data, "sentences", path, list)):
            where = f"{path}: sentences[{i}]"
            caps.setdefault(need(s, "video_id", where), []).append(need(s, "caption", where))
        chosen = []
        for i, v in enumerate(need(data, "videos", path, list)):
            vid = need(v, "video_id", f"{path}: videos[{i}]")
            if need(v, "split", f"{path}: videos[{i}]") == split:
                if vid not in caps:
                    raise UserError(f"{path}: video {vid} has no entry in 'sentences'")
                chosen += [(vid, os.path.join(src, folder, f"{vid}.mp4"), c) for c in caps[vid]]
        triples.append(chosen)
    return captioning("msrvtt", "video", *triples)


def msvd_qa(src, args):
    mpath = src_file(src, "youtube_mapping.txt", "lines '<youtube clip name> vid<N>'")
    clips = {}
    try:
        with open(mpath, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{mpath}: cannot be read ({type(e).__name__})")
    for ln, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].startswith("vid") or not parts[1][3:].isdigit():
            raise UserError(f"{mpath}:{ln}: expected '<youtube clip name> vid<N>', got {line.strip()!r}")
        clips[int(parts[1][3:])] = parts[0]
    out = []
    for split in ("train", "test"):
        path = src_file(src, f"{split}_qa.json", f"MSVD-QA's {split} questions")
        rows = []
        for i, r in enumerate(read_json(path, "answer, id, question, video_id")):
            where = f"{path}: [{i}]"
            vid = need(r, "video_id", where, int)
            if vid not in clips:
                raise UserError(f"{where}: video_id {vid} has no line 'vid{vid}' in {mpath}")
            answer = need(r, "answer", where)
            rows.append(qa(f"msvd-qa/{need(r, 'id', where, int)}", "video",
                           os.path.join(src, "YouTubeClips", f"{clips[vid]}.avi"), need(r, "question", where),
                           answer, [answer]))
        out.append(rows)
    return tuple(out)


def audiocaps(src, args):
    triples = []
    for split in ("train", "test"):
        path = src_file(src, f"{split}.csv", f"AudioCaps' {split} CSV")
        triples.append([(r["youtube_id"], os.path.join(src, "audio", split, f"{r['youtube_id']}.wav"), r["caption"])
                        for r in read_csv(path, ["audiocap_id", "youtube_id", "start_time", "caption"])])
    return captioning("audiocaps", "audio", *triples)


def clotho_aqa(src, args):
    out = []
    for split in ("train", "test"):
        path = src_file(src, f"clotho_aqa_{split}.csv", f"Clotho-AQA's {split} CSV")
        groups = {}
        for r in read_csv(path, ["file_name", "QuestionText", "answer"]):
            groups.setdefault((r["file_name"], r["QuestionText"].strip()), []).append(r["answer"].strip())
        per_file, rows = Counter(), []
        for (fn, question), answers in groups.items():
            rows.append(qa(f"clotho-aqa/{fn}/{per_file[fn]}", "audio", os.path.join(src, "audio_files", fn),
                           question, vote(answers), answers, answers))
            per_file[fn] += 1
        out.append(rows)
    return tuple(out)


def llava(src, args):
    root = os.path.abspath(os.path.expanduser(args.image_root)) if args.image_root else src
    out = []
    for split in ("train", "test"):
        path = src_file(src, f"{split}.json", f"a JSON list of LLaVA-style items ({split} split)")
        rows = []
        for i, item in enumerate(read_json(path, "id, image, conversations")):
            where = f"{path}: [{i}]"
            media = os.path.join(root, need(item, "image", where))
            if isinstance(item, dict) and "conversations" in item:
                turns, pairs = need(item, "conversations", where, list), []
                for k in range(0, len(turns), 2):
                    w = f"{where}.conversations[{k}]"
                    if len(turns) < k + 2 or [t.get("from") if isinstance(t, dict) else None
                                             for t in turns[k:k + 2]] != ["human", "gpt"]:
                        raise UserError(f"{w}: expected alternating turns from 'human' then 'gpt'")
                    pairs.append((need(turns[k], "value", w), need(turns[k + 1], "value", w)))
                base = f"llava/{item.get('id', f'{split}{i}')}"
            else:                          # MLLM-CL's test files: {"question_id", "image", "text", "answer"}
                if not isinstance(item, dict) or "text" not in item:
                    raise UserError(f"{where}: expected key 'conversations' (LLaVA) or 'text' + 'answer' (MLLM-CL)")
                pairs = [(need(item, "text", where), str(need(item, "answer", where, (str, int, float))))]
                base = f"llava/{item.get('question_id', item.get('id', f'{split}{i}'))}"
            for k, (question, answer) in enumerate(pairs):
                question = question.replace("<image>", "").strip()
                if not question:
                    raise UserError(f"{where}: a human turn holds nothing but the <image> marker")
                rows.append(qa(base + (f"/{k}" if len(pairs) > 1 else ""), "image", media, question,
                               answer.strip(), [answer.strip()]))
                rows[-1]["metric"] = llava_rule(src, media, args.metric)
        out.append(rows)
    return tuple(out)


def alpaca(src, args):
    path = src if os.path.isfile(src) else src_file(src, "alpaca_data.json", "an Alpaca-style instruction JSON")
    rows = []
    for i, item in enumerate(read_json(path, "instruction, input, output")):
        where = f"{path}: [{i}]"
        instruction, output = need(item, "instruction", where).strip(), need(item, "output", where).strip()
        extra = item.get("input", "")
        if not isinstance(extra, str):
            raise UserError(f"{where}: key 'input' should be a string, got {json.dumps(extra)[:60]}")
        if args.max_words is None or len(output.split()) <= args.max_words:
            rows.append({"id": f"alpaca/{i}", "modality": "text", "media": None,
                         "instruction": f"{instruction} {extra.strip()}" if extra.strip() else instruction,
                         "target": output, "answers": [output]})
    if len(rows) <= args.test_size:
        kept = "" if args.max_words is None else f" with at most {args.max_words} output words"
        raise UserError(f"{path}: {len(rows)} items{kept} leave none for training after --test-size {args.test_size}")
    return rows[:-args.test_size], rows[-args.test_size:]             # --test-size >= 1 (checked in main)


# Each benchmark's scoring rule (data/score.py), as the papers' evaluation scores it: MoInCL's captions by
# pycocoevalcap CIDEr (papers' scale), OK-VQA / Clotho-AQA by VQA accuracy, MSVD-QA by VQA-processed exact match;
# alpaca's text-only set by exact match. llava: per MLLM-CL domain / ability (llava_rule).
RULE = {"flickr30k": "cider", "msrvtt": "cider", "audiocaps": "cider", "okvqa": "vqa", "clotho-aqa": "vqa",
        "msvd-qa": "exact", "alpaca": "exact"}
# MLLM-CL's evaluation scripts, by the folder names of its data release (RS, Med, AD, Sci, Fin; OCR, Math, VP, APP
# and their *_test folders): substring for RS / Med / AD / OCRBench / CV-Bench count, exact match for Fin and for
# Sci's multiple-choice sources (AI2D, TQA, SciVerse, VQA image names; its MapQA items by substring), the option
# letter for the GUI test (MMT-Bench). MathVista's answer extraction needs GPT: exact match on the short answer here.
MLLM_CL_RULES = {"rs": "contains", "med": "contains", "ad": "contains", "sci": "exact", "fin": "exact",
                 "ocr": "contains", "math": "exact", "vp": "contains", "app": "letter"}
_SCI_EXACT = ("AI2D", "TQA", "VQA", "SciVerse")


def llava_rule(src, image, flag):
    """--metric, else MLLM-CL's rule for the domain / ability that --src names (its folder name), else exact."""
    if flag:
        return flag
    domain = os.path.basename(os.path.normpath(src)).lower().removesuffix("_test")
    if domain == "sci":
        return "exact" if os.path.basename(image).split("_")[0] in _SCI_EXACT else "contains"
    return MLLM_CL_RULES.get(domain, "exact")


DATASETS = {"flickr30k": flickr30k, "okvqa": okvqa, "msrvtt": msrvtt, "msvd-qa": msvd_qa, "audiocaps": audiocaps,
            "clotho-aqa": clotho_aqa, "llava": llava, "alpaca": alpaca}


# ------------------------------------------------------------------------------------------------ media, writing, CLI
def check_media(splits, skip):
    """Drop (with --skip-missing) or report samples whose media file is missing."""
    exists, missing = {}, []
    for rows in splits.values():
        for r in rows:
            if r["media"] is not None and not exists.setdefault(r["media"], os.path.isfile(r["media"])):
                missing.append(r["media"])
    if not missing:
        return splits
    files = len(set(missing))
    if not skip:
        raise UserError(f"media file {missing[0]} does not exist ({files} missing file(s), {len(missing)} "
                        f"sample(s); --skip-missing drops them)")
    print(f"skipped {len(missing)} sample(s) whose media is missing ({files} file(s))")
    return {s: [r for r in rows if r["media"] is None or exists[r["media"]]] for s, rows in splits.items()}


def write_manifests(out, splits):
    """Both manifests to temp files in `out`, then os.replace both; on failure no temp file is left."""
    try:
        os.makedirs(out, exist_ok=True)
        tmps = {}
        try:
            for split, rows in splits.items():
                fd, tmps[split] = tempfile.mkstemp(prefix=f".{split}.", suffix=".jsonl.tmp", dir=out)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            for split, tmp in tmps.items():
                os.replace(tmp, os.path.join(out, f"{split}.jsonl"))
        finally:
            for tmp in tmps.values():
                if os.path.exists(tmp):
                    os.remove(tmp)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write the manifests ({type(e).__name__}: {e.strerror or e})")


class Parser(argparse.ArgumentParser):
    def error(self, message):            # one `error:` line instead of argparse's usage + message
        raise UserError(f"{message} (see python -m data.convert -h)")


def main(argv=None):
    p = Parser(prog="python -m data.convert", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=sorted(DATASETS))
    p.add_argument("--src", required=True, help="folder of the official release (alpaca: the JSON file or its folder)")
    p.add_argument("--out", required=True, help="task folder to write train.jsonl / test.jsonl into")
    p.add_argument("--skip-missing", action="store_true", help="drop samples whose media file is missing")
    p.add_argument("--image-root", help="llava: folder the 'image' paths are relative to (default --src)")
    p.add_argument("--test-size", type=int, default=200, help="alpaca: the last N items are the test split")
    p.add_argument("--max-words", type=int, help="alpaca: keep only items whose output has at most N words")
    p.add_argument("--metric", choices=[r for r in RULES if not r.startswith("cider")],
                   help="llava: the scoring rule of every sample (default: MLLM-CL's rule for the domain / ability "
                        "that --src's folder name gives, e.g. RS -> contains; exact for other names)")
    args = p.parse_args(argv)
    src = os.path.abspath(os.path.expanduser(args.src))
    if not (os.path.isdir(src) or (args.dataset == "alpaca" and os.path.isfile(src))):
        raise UserError(f"--src {args.src}: not a directory")
    if args.test_size < 1 or (args.max_words is not None and args.max_words < 1):
        raise UserError("--test-size and --max-words must be >= 1")
    try:
        train, test = DATASETS[args.dataset](src, args)
    except (KeyError, TypeError, ValueError, AttributeError) as e:    # a layout the checks above did not foresee
        raise UserError(f"{args.dataset}: unexpected layout under {src} ({type(e).__name__}: {e}); "
                        f"expected files: python -m data.convert -h")
    for row in train + test:
        row.setdefault("metric", RULE.get(args.dataset))
    splits = check_media({"train": train, "test": test}, args.skip_missing)
    for split, rows in splits.items():
        if not rows:
            raise UserError(f"{src}: no {split} samples for {args.dataset} (layout: python -m data.convert -h)")
    out = os.path.abspath(os.path.expanduser(args.out))
    write_manifests(out, splits)
    print(f"wrote {len(splits['train'])} train / {len(splits['test'])} test samples to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
