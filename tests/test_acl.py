"""acl (MLLM-CL's ability CL) data: deterministic files, a test generator that shares no style with the training
one (declared and as drawn), manifests and PNGs that read back, answers inside the training vocabulary, each
ability's scoring rule on every line, and those rules on hand-made predictions."""
import json
import os

import numpy as np
import pytest

from data import acl as A
from data import generate as G
from data.load import Sample, load_image, read_manifest
from data.score import score_samples

SMALL = {"train": 48, "test": 32, "test_iid": 16}
SPLITS = tuple(A.SIZES)


def lines(root, task, split):
    with open(os.path.join(root, task, f"{split}.jsonl")) as f:
        return [json.loads(x) for x in f]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = str(tmp_path_factory.mktemp("acl"))
    for t in A.ORDER:
        G.write_task(r, t, seed=0, sizes=SMALL)
    return r


def test_registered_as_image_qa_with_three_splits():
    assert all(G.TASKS[t] == ("image", "acl") for t in A.ORDER)
    assert all(G.split_sizes(t) == {"train": 320, "test": 64, "test_iid": 64} for t in A.ORDER)
    from common import ORDERS, parse_args, shared_parser
    assert ORDERS["acl"][1] == ["acl-ocr", "acl-math", "acl-vp", "acl-gui"]
    assert parse_args(shared_parser("x", "x"), ["--scenario", "acl"]).task_names == A.ORDER


def test_generation_is_deterministic(tmp_path):
    """Same seed: byte-identical manifests and PNGs of every split; another seed draws other samples."""
    sizes = {"train": 5, "test": 4, "test_iid": 3}
    for name in ("a", "b", "c"):
        for t in A.ORDER:
            G.write_task(str(tmp_path / name), t, seed=7 if name != "c" else 8, sizes=sizes)
    for t in A.ORDER:
        files = sorted(os.listdir(tmp_path / "a" / t / "media")) + [f"{s}.jsonl" for s in sizes]
        assert sorted(os.listdir(tmp_path / "b" / t / "media")) == files[:-3] and len(files) == 12 + 3
        for f in files:
            sub = "" if f.endswith(".jsonl") else "media"
            a, b = (open(tmp_path / x / t / sub / f, "rb").read() for x in ("a", "b"))
            assert a == b, f"{t}/{f} differs between two draws with the same seed"
        assert lines(tmp_path / "a", t, "train") != lines(tmp_path / "c", t, "train")


def test_declared_styles_of_train_and_test_are_disjoint():
    for t in A.ORDER:
        train, test = A.STYLES[t]["train"], A.STYLES[t]["test"]
        assert set(train) == set(test) and {"layout", "background", "size", "phrasing"} <= set(train)
        assert ("font" in train) == (t != "acl-vp") and ("options" in train) == (t == "acl-gui")
        for factor in train:
            assert train[factor] and test[factor], (t, factor)
            shared = set(train[factor]) & set(test[factor])
            assert not shared, f"{t}: train and test generators share {factor} {shared}"


def test_every_declared_style_is_drawn_and_nothing_else():
    """The declared sets are what each generator draws: 2000 draws (question and style only) reach every declared
    value and no other."""
    for t in A.ORDER:
        for gen in ("train", "test"):
            rng, seen = np.random.default_rng(1), {}
            for _ in range(2000):
                style = A.make_example(t, gen, rng, render=False)[4]
                for k, v in style.items():
                    seen.setdefault(k, set()).add(v)
            assert seen == {k: set(v) for k, v in A.STYLES[t][gen].items()}, (t, gen)


def test_samples_record_the_style_of_their_own_generator(root):
    """Every line's recorded style comes from its split's generator (test: the test generator; train and test_iid:
    the train generator), and no recorded value of a test line occurs in any training line."""
    for t in A.ORDER:
        seen = {}
        for split in SPLITS:
            gen = A.GENERATOR_OF_SPLIT[split]
            for row in lines(root, t, split):
                core = {"layout", "background", "size", "phrasing"}      # + font where text is drawn (not bars)
                assert core <= set(row["style"]) <= set(A.STYLES[t][gen]), row["id"]
                for factor, value in row["style"].items():
                    assert value in A.STYLES[t][gen][factor], (row["id"], factor, value)
                    seen.setdefault((gen, factor), set()).add(value)
                assert row["style"]["phrasing"].split("{")[0].split("?")[0] in row["instruction"]
        for factor in A.STYLES[t]["train"]:
            assert not seen[("train", factor)] & seen[("test", factor)], (t, factor)


def test_files_round_trip_through_the_loaders(root):
    """read_manifest gives QA samples with their rule; the PNGs are 64 px and hold exactly the pixels drawn."""
    for t in A.ORDER:
        for split in SPLITS:
            samples = read_manifest(os.path.join(root, t, f"{split}.jsonl"), t)
            assert len(samples) == SMALL[split]
            rng = G._rng(0, t, split)                        # the stream write_task drew from: draw it again
            for s in samples:
                img, q, a, metric, _ = A.make_example(t, A.GENERATOR_OF_SPLIT[split], rng)
                assert (s.instruction, s.target, s.answers, s.metric) == (q, a, [a], metric)
                assert os.path.isabs(s.media) and s.media.endswith(".png") and s.modality == "image"
                pixels = load_image(s.media)
                assert pixels.shape == (A.ACL_IMG, A.ACL_IMG, 3) and (pixels == np.asarray(img)).all(), s.id


def test_test_answers_are_in_the_training_answer_vocabulary(root):
    """Test (and IID) answers come from the ability's vocabulary, and the training generator answers with every word
    of it, so nothing a test asks for is outside what training can teach."""
    for t in A.ORDER:
        rng = np.random.default_rng(2)
        trained = {A.make_example(t, "train", rng, render=False)[2] for _ in range(3000)}
        assert trained == set(A.ANSWERS[t]), t
        for split in SPLITS:
            got = {row["target"] for row in lines(root, t, split)}
            assert got <= trained, (t, split, got - trained)
        rng = np.random.default_rng(3)
        assert {A.make_example(t, "test", rng, render=False)[2] for _ in range(3000)} <= trained, t


def test_every_line_carries_its_abilitys_rule(root):
    """OCR and counting `contains` (OCRBench, CV-Bench count), math and spatial relations `exact`, GUI `letter`."""
    for t in A.ORDER:
        for split in SPLITS:
            for row in lines(root, t, split):
                if t == "acl-vp":
                    want = "exact" if row["target"] in ("left", "right", "above", "below") else "contains"
                else:
                    want = {"acl-ocr": "contains", "acl-math": "exact", "acl-gui": "letter"}[t]
                assert row["metric"] == want, row


def test_the_rules_on_hand_made_predictions():
    cases = [  # (rule, answer, prediction, score)
        ("contains", "cat", "the word is CAT", 100), ("contains", "cat", "cat", 100), ("contains", "cat", "cats", 0),
        ("contains", "cat", "dog", 0), ("contains", "7", "there are seven", 100), ("contains", "7", "17", 0),
        ("contains", "12", "it reads 12.", 100),
        ("letter", "B", "B", 100), ("letter", "B", "(B) save", 100), ("letter", "B", "B: save", 100),
        ("letter", "B", "b", 100), ("letter", "B", "C", 0), ("letter", "B", "save", 0), ("letter", "B", "", 0),
        ("exact", "7", "7", 100), ("exact", "7", "seven", 100), ("exact", "7", "the answer is 7", 0),
        ("exact", "yes", "Yes.", 100), ("exact", "no", "yes", 0), ("exact", "left", "left", 100),
        ("exact", "left", "to the left", 0), ("exact", "red", "red", 100),
    ]
    samples = [Sample(str(i), "image", "q", ans, [ans], metric=rule) for i, (rule, ans, _, _) in enumerate(cases)]
    got = score_samples(samples, [pred for _, _, pred, _ in cases])
    assert got == [float(want) for *_, want in cases], [c for c, g in zip(cases, got) if g != c[3]]


def test_acl_vocabulary_holds_every_word_drawn(root):
    """acl_vocabulary() (what the rebuilt tiny base must add) covers every instruction and answer of both
    generators and the task names; the shipped base's vocabulary() does not hold them yet (its key is unchanged)."""
    vocab = set(A.acl_vocabulary())
    for t in A.ORDER:
        assert set(A.split_words(t)) <= vocab
        for split in SPLITS:
            for row in lines(root, t, split):
                assert set(A.split_words(row["instruction"] + " " + row["target"])) <= vocab, row
    for _, q, a in A.acl_text_pairs(n_per_task=200):
        assert set(A.split_words(q + " " + a)) <= vocab
    assert G._split_words("acl-ocr (A) 18") == A.split_words("acl-ocr (A) 18")
    assert {"ocr", "gui", "18", "(", "lamp"} <= vocab and not {"ocr", "gui", "18", "lamp"} & set(G.vocabulary())


def test_acl_captions_and_encoder_labels_for_the_acl_base():
    """What the acl base's ViT and aligned projectors learn from: a caption in the acl vocabulary naming what the
    picture shows (the text, the expression, the counted objects, the buttons) and one label per attribute."""
    vocab, rng = set(A.acl_vocabulary()), np.random.default_rng(3)
    for task in A.ORDER:
        for gen in ("train", "test"):
            marked = 0
            for _ in range(20):
                img, cap, lab, patch = A.describe(task, gen, rng)
                assert img.size == (A.ACL_IMG, A.ACL_IMG) and set(A.split_words(cap)) <= vocab, cap
                assert len(lab) == len(A.LABELS) and lab[0] == A.ORDER.index(task)
                assert sum(v >= 0 for v in lab[1:]) >= 1
                assert all(-1 <= v < k for v, k in zip(lab, A.LABEL_CLASSES)), (task, lab)
                assert len(patch) == 64 and all(0 <= v < len(A.PATCH_MARKS) for v in patch)
                marked += any(patch)     # a lone 5x7 glyph across four patches may fill a quarter of none
            assert marked >= 15, (task, gen, marked)
    info = {"words": ["save", "open", "copy", "undo"], "selected": "open", "pointed": "undo"}
    assert A.caption("acl-gui", "pointer", info) == "buttons save open copy undo , open selected , pointer on undo"
    assert A.caption("acl-math", "arith", {"a": "7", "op": "-", "b": "2"}) == "7 minus 2"


def test_acl_vit_labels_are_read_off_the_picture_alone():
    """The ViT never sees the question, so a vp label may not depend on which kind it asks about: per-kind counts of
    every object drawn, and the relation of the pair's earlier kind (KINDS order) to the other, whichever is named
    first."""
    rng, seen = np.random.default_rng(5), set()
    for _ in range(200):
        state = rng.bit_generator.state
        _, _, lab, _ = A.describe("acl-vp", "train", rng)
        rng2 = np.random.default_rng()
        rng2.bit_generator.state = state                    # the same draws again, for the question's roles
        _, qtype, _, answer, _, info = A.ABILITIES["acl-vp"]("train", rng2, False)
        lab = dict(zip(A.LABELS, lab))
        counts = {k: lab[f"{k}s"] for k in A.KINDS}
        if qtype == "count":
            assert counts[info["kind"]] == info["count"] and counts[info["other"]] == info["others"]
            assert sum(counts.values()) == info["count"] + info["others"] and lab["relation"] == -1
        else:
            a, b = info["a"].split()[-1], info["b"].split()[-1]
            assert counts == {k: int(k in (a, b)) for k in A.KINDS}
            rel = A.RELATIONS[lab["relation"]]
            assert rel == (answer if A.KINDS.index(a) < A.KINDS.index(b) else A.OPPOSITE[answer])
            seen.add(A.KINDS.index(a) < A.KINDS.index(b))
    assert seen == {True, False}      # both orders of the named pair were drawn


def test_patch_labels_name_what_covers_each_patch_most():
    """Hand-made marks: a glyph over one patch, a red square over four, a pointer drawn later over part of the
    square (later wins where marks overlap), a sliver under a quarter of a patch (no label), a space (no mark)."""
    idx = A.PATCH_MARKS.index
    marks = [("K", (0, 0, 7, 7)), ("red square", (16, 16, 31, 31)), ("pointer", (24, 24, 30, 31)),
             ("a", (56, 56, 56, 63)), (" ", (8, 0, 15, 7))]
    lab = np.array(A.patch_labels(marks)).reshape(8, 8)
    assert lab[0, 0] == idx("k") and lab[0, 1] == 0                       # upper case glyph -> its letter
    assert lab[2, 2] == lab[2, 3] == lab[3, 2] == idx("red square")
    assert lab[3, 3] == idx("pointer")                                      # 42 of 64 pixels: the pointer
    assert lab[7, 7] == 0                                                   # 8 pixels: under a quarter
    assert A.patch_labels([("a", (56, 56, 57, 63))])[63] == idx("a")        # 16 pixels: a quarter, labelled
    assert (lab > 0).sum() == 5


def test_val_style_holds_out_a_training_style(root, tmp_path):
    """--val style / phrasing: each task's validation samples are training samples drawn in its held-out values (a
    train-generator style, never a test one), none of which is trained on; the test split is never read."""
    from common import parse_args, shared_parser
    from data.load import UserError, load_tasks
    flags = ["--scenario", "acl", "--data-root", root]
    full, _ = load_tasks(parse_args(shared_parser("x", "x"), flags))
    for kind in ("style", "phrasing"):
        args = parse_args(shared_parser("x", "x"), flags + ["--val", kind])
        assert args.run_name == f"x-val{kind}" and f"x-val{kind}__acl" in args.output_dir
        check_held_out(load_tasks(args)[0], full, kind)
    for t in ["dcl-rs", "dcl-med", "dcl-ad", "dcl-sci", "dcl-fin"]:
        G.write_task(str(tmp_path), t, seed=0, sizes={"train": 10, "test": 2})
    with pytest.raises(UserError, match="--val style: task dcl-rs has no held-out styles"):
        load_tasks(parse_args(shared_parser("x", "x"), ["--scenario", "dcl", "--data-root", str(tmp_path), "--val",
                                                        "style"]))


def check_held_out(tasks, full, kind):
    for task, whole in zip(tasks, full):
        train_ids = {s.id for s in whole.train}
        held = {s.id for s in whole.train if A.held_out(task.name, s.style, kind)}
        assert {s.id for s in task.test} <= held and len(task.test) == min(len(held), SMALL["test"]) > 0
        assert {s.id for s in task.train} == train_ids - held and task.train
        for factor, values in A.VAL_HELD_OUT[kind][task.name].items():
            assert set(values) <= set(A.STYLES[task.name]["train"][factor]) - set(A.STYLES[task.name]["test"][factor])
            assert all(s.style.get(factor) not in values for s in task.train)
