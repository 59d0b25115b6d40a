"""data/convert.py: every dataset's official layout (tiny fixtures, real media) -> exact manifests; one-line errors."""
import json
import os
import subprocess
import sys

import pytest

from common import ROOT
from data.load import read_manifest
from data import convert
import fixtures as FX

DESCRIBE = {m: f"describe the {m}." for m in ("image", "video", "audio")}


def rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def convert_ok(tmp_path, dataset, *flags):
    src = FX.WRITERS[dataset](str(tmp_path / "src"))
    out = str(tmp_path / "out")
    convert.main([dataset, "--src", src, "--out", out, *flags])
    return src, out


def cap(id_, media, modality, target, refs=None):
    r = {"id": id_, "modality": modality, "media": media, "instruction": DESCRIBE[modality], "target": target}
    return r if refs is None else dict(r, references=refs)


def qa(id_, media, modality, question, target, answers, annotators=None):
    r = {"id": id_, "modality": modality, "media": media, "instruction": question, "target": target, "answers": answers}
    return r if annotators is None else dict(r, annotators=annotators)


# each benchmark's own scoring rule, on every line (llava: its --src folder names no MLLM-CL domain -> exact)
RULES = {"flickr30k": "cider", "okvqa": "vqa", "msrvtt": "cider", "msvd-qa": "exact", "audiocaps": "cider",
         "clotho-aqa": "vqa", "llava": "exact", "alpaca": "exact"}


def expected(dataset, src):
    """(train rows, test rows) the fixture of `dataset` must convert to, spelled out, each with its rule."""
    return tuple([dict(r, metric=RULES[dataset]) for r in rows] for rows in _expected(dataset, src))


def _expected(dataset, src):
    j = lambda *p: os.path.join(src, *p)   # noqa: E731
    if dataset == "flickr30k":
        im = {n: j("flickr30k-images", f"{n}.jpg") for n in ("1000092795", "10002456", "1000344755", "1000366164")}
        return ([cap("flickr30k/1000092795/0", im["1000092795"], "image", "Two young guys with shaggy hair look at their hands."),
                 cap("flickr30k/1000092795/1", im["1000092795"], "image", "Two young men hanging out in the yard."),
                 cap("flickr30k/1000092795/2", im["1000092795"], "image", "Two friends enjoy time outside."),
                 cap("flickr30k/10002456/0", im["10002456"], "image", "Several men in hard hats are operating a pulley system."),
                 cap("flickr30k/10002456/1", im["10002456"], "image", "Workers look down from up above on a piece of equipment.")],
                [cap("flickr30k/1000344755", im["1000344755"], "image", "Someone in a blue shirt and hat is standing on stairs.",
                     ["Someone in a blue shirt and hat is standing on stairs.", "A man in a blue shirt is standing on a ladder."]),
                 cap("flickr30k/1000366164", im["1000366164"], "image", "Two men, one in a gray shirt, are in a kitchen.",
                     ["Two men, one in a gray shirt, are in a kitchen.", "Two men are cooking a meal."])])
    if dataset == "okvqa":
        tr, va = (lambda i: j("train2014", f"COCO_train2014_{i:012d}.jpg")), (lambda i: j("val2014", f"COCO_val2014_{i:012d}.jpg"))
        a = {qid: ans for items in FX.OKVQA.values() for qid, _, _, ans in items}
        return ([qa("okvqa/2971475", tr(9), "image", "What sport can you use this for?", "Two",
                    ["Two", "2", "three", "two", "4"], a[2971475]),
                 qa("okvqa/2971470", tr(9), "image", "What is the food called?", "blue", ["blue", "red"], a[2971470]),
                 qa("okvqa/1584315", tr(25), "image", "What is this animal's name?", "giraffe", ["giraffe"], a[1584315])],
                [qa("okvqa/5725", va(42), "image", "What is the man holding?", "racket", ["racket", "tennis racket", "bat"],
                    a[5725]),
                 qa("okvqa/3545", va(73), "image", "Where is this?", "the beach",
                    ["the beach", "beach", "Beach!", "ocean", "shore", "sea"], a[3545])])
    if dataset == "msrvtt":
        v = lambda f, n: j(f, f"video{n}.mp4")   # noqa: E731
        return ([cap("msrvtt/video0/0", v("TrainValVideo", 0), "video", "a cartoon shows a dog"),
                 cap("msrvtt/video0/1", v("TrainValVideo", 0), "video", "an animated dog runs"),
                 cap("msrvtt/video1/0", v("TrainValVideo", 1), "video", "a man is cooking"),
                 cap("msrvtt/video1/1", v("TrainValVideo", 1), "video", "someone cooks food")],
                [cap("msrvtt/video3", v("TestVideo", 3), "video", "people are dancing",
                     ["people are dancing", "a group dances on stage", "dancers perform"]),
                 cap("msrvtt/video4", v("TestVideo", 4), "video", "a car drives fast", ["a car drives fast", "a race car on a track"])])
    if dataset == "msvd-qa":
        c = lambda k: j("YouTubeClips", f"{FX.MSVD_CLIPS[k]}.avi")   # noqa: E731
        return ([qa("msvd-qa/0", c(0), "video", "what is playing?", "cat", ["cat"]),
                 qa("msvd-qa/1", c(0), "video", "what is the cat doing?", "play", ["play"]),
                 qa("msvd-qa/2", c(1), "video", "who is slicing a tomato?", "man", ["man"])],
                [qa("msvd-qa/4", c(3), "video", "who is riding a horse?", "woman", ["woman"]),
                 qa("msvd-qa/5", c(3), "video", "what is a woman riding?", "horse", ["horse"])])
    if dataset == "audiocaps":
        w = lambda s, y: j("audio", s, f"{y}.wav")   # noqa: E731
        return ([cap("audiocaps/r1nicOVtvkQ/0", w("train", "r1nicOVtvkQ"), "audio", "A woman talks nearby as water pours"),
                 cap("audiocaps/UDGBjjwyaqE/0", w("train", "UDGBjjwyaqE"), "audio", "Multiple clanging and clanking sounds"),
                 cap("audiocaps/0Z8TSw5fPno/0", w("train", "0Z8TSw5fPno"), "audio", "A man speaks, followed by a dog barking")],
                [cap("audiocaps/--0w1YA1Hm4", w("test", "--0w1YA1Hm4"), "audio", "A vehicle driving as a man and woman are talking",
                     ["A vehicle driving as a man and woman are talking", "A man and woman speak while a car moves"]),
                 cap("audiocaps/-AheI8Epim4", w("test", "-AheI8Epim4"), "audio", "A man is speaking, then a bird chirps",
                     ["A man is speaking, then a bird chirps", "Birds chirp as a man talks"])])
    if dataset == "clotho-aqa":
        f = lambda n: j("audio_files", n)   # noqa: E731
        radio, birds, night = f("Distorted AM Radio noise.wav"), f("birds_in_forest.wav"), f("Night_Crickets.wav")
        return ([qa("clotho-aqa/Distorted AM Radio noise.wav/0", radio, "audio", "is it raining?", "no", ["no", "No", "yes"],
                    ["no", "No", "yes"]),
                 qa("clotho-aqa/Distorted AM Radio noise.wav/1", radio, "audio", "what is making the noise, a radio?", "radio",
                    ["radio", "a radio", "tv"], ["radio", "a radio", "tv"]),
                 qa("clotho-aqa/birds_in_forest.wav/0", birds, "audio", "are there birds?", "yes", ["yes"], ["yes"] * 3)],
                [qa("clotho-aqa/Night_Crickets.wav/0", night, "audio", "how many dogs bark?", "one", ["one", "two", "1"],
                    ["one", "two", "1"]),
                 qa("clotho-aqa/Night_Crickets.wav/1", night, "audio", "is it night?", "yes", ["yes", "no", "maybe"],
                    ["yes", "no", "maybe"])])
    if dataset == "llava":
        im = lambda n: j("images", f"{n}.jpg")   # noqa: E731
        return ([qa("llava/rs_0/0", im("farm"), "image", "What is the main land use?", "farmland", ["farmland"]),
                 qa("llava/rs_0/1", im("farm"), "image", "How many buildings are there?", "3", ["3"]),
                 qa("llava/rs_1", im("lake"), "image", "Is there a lake?", "yes", ["yes"])],
                [qa("llava/17", im("port"), "image", "What is in the water?", "ships", ["ships"]),
                 qa("llava/18", im("lake"), "image", "How many lakes?", "2", ["2"]),
                 qa("llava/rs_9", im("farm"), "image", "Is it urban?", "no", ["no"])])
    raise KeyError(dataset)


@pytest.mark.parametrize("dataset", ["flickr30k", "okvqa", "msrvtt", "msvd-qa", "audiocaps", "clotho-aqa", "llava"])
def test_converts_official_layout_exactly(tmp_path, capsys, dataset):
    src, out = convert_ok(tmp_path, dataset)
    train, test = expected(dataset, src)
    assert rows(os.path.join(out, "train.jsonl")) == train
    assert rows(os.path.join(out, "test.jsonl")) == test
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote {len(train)} train / {len(test)} test samples to {out}"
    assert sorted(os.listdir(out)) == ["test.jsonl", "train.jsonl"]
    for split, want in (("train", train), ("test", test)):
        samples = read_manifest(os.path.join(out, f"{split}.jsonl"), dataset)
        assert [s.media for s in samples] == [r["media"] for r in want]
        assert all(os.path.isabs(s.media) and os.path.isfile(s.media) for s in samples)
        assert [s.answers for s in samples] == [r.get("answers") for r in want]


def test_media_are_readable_by_the_loaders(tmp_path):
    from data.load import load_audio, load_image, load_video
    for dataset, load in (("okvqa", load_image), ("msrvtt", load_video), ("msvd-qa", load_video),
                          ("audiocaps", lambda p: load_audio(p, 16000)), ("clotho-aqa", lambda p: load_audio(p, 16000))):
        _, out = convert_ok(tmp_path / dataset, dataset)
        media = rows(os.path.join(out, "test.jsonl"))[0]["media"]
        x = load(media)
        assert x.shape == {"okvqa": (48, 48, 3), "audiocaps": (8000,), "clotho-aqa": (8000,)}.get(dataset, (8, 48, 48, 3))


def test_alpaca_text_set(tmp_path):
    src = FX.write_alpaca(str(tmp_path / "src"))
    out = str(tmp_path / "out")
    convert.main(["alpaca", "--src", os.path.join(src, "alpaca_data.json"), "--out", out, "--test-size", "2"])
    text = lambda i, instr: {"id": f"alpaca/{i}", "modality": "text", "media": None, "instruction": instr,   # noqa: E731
                             "target": FX.ALPACA[i]["output"], "answers": [FX.ALPACA[i]["output"]], "metric": "exact"}
    assert rows(os.path.join(out, "train.jsonl")) == [text(0, "Give three tips for staying healthy."),
                                                      text(1, "What is the capital of France?"),
                                                      text(2, "Translate to French. Good morning")]
    assert rows(os.path.join(out, "test.jsonl")) == [text(3, "Add the numbers. 2 and 3"), text(4, "Name a primary colour.")]
    assert len(read_manifest(os.path.join(out, "test.jsonl"), "text")) == 2
    convert.main(["alpaca", "--src", src, "--out", out, "--test-size", "1", "--max-words", "1"])   # folder as --src
    assert [r["id"] for r in rows(os.path.join(out, "train.jsonl"))] == ["alpaca/1", "alpaca/2", "alpaca/3"]
    assert [r["id"] for r in rows(os.path.join(out, "test.jsonl"))] == ["alpaca/4"]


def test_cli_success_and_one_line_errors(tmp_path, capsys):
    """The success line and a missing file's one line; the latter from `python -m data.convert` as a user runs it."""
    src = FX.write_okvqa(str(tmp_path / "src"))
    out = str(tmp_path / "out")
    convert.main(["okvqa", "--src", src, "--out", out])
    assert capsys.readouterr().out.strip() == f"wrote 3 train / 2 test samples to {out}"
    train, test = expected("okvqa", src)
    assert rows(os.path.join(out, "train.jsonl")) == train and rows(os.path.join(out, "test.jsonl")) == test
    os.remove(os.path.join(src, "mscoco_val2014_annotations.json"))
    r = subprocess.run([sys.executable, "-m", "data.convert", "okvqa", "--src", src, "--out", str(tmp_path / "out2")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode != 0 and r.stderr.splitlines() == [
        f"error: {os.path.join(src, 'mscoco_val2014_annotations.json')}: not found (expected OK-VQA's val annotations)"]
    assert not os.path.exists(tmp_path / "out2")
    assert fails(capsys, ["coco", "--src", src, "--out", out]).startswith("error: argument dataset")   # argparse's too


def fails(capsys, argv):
    """Run main(argv), expect a UserError; returns its single message line (checked to start with 'error:')."""
    with pytest.raises(SystemExit) as e:
        convert.main(argv)
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg and e.value.code != 0
    return msg


def remove(*parts):
    def breaker(src):
        os.remove(os.path.join(src, *parts))
        return os.path.join(src, *parts)
    return breaker


def break_csv_column(src):
    path = os.path.join(src, "test.csv")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("caption", "text", 1))
    return path


def break_json_key(src):
    path = os.path.join(src, "dataset_flickr30k.json")
    with open(path) as f:
        data = json.load(f)
    del data["images"][3]["sentences"][1]["raw"]
    with open(path, "w") as f:
        json.dump(data, f)
    return path


@pytest.mark.parametrize("dataset,breaker,message", [
    ("audiocaps", break_csv_column, "{}: missing column(s) caption (expected columns "
                                    "audiocap_id,youtube_id,start_time,caption; header is audiocap_id,youtube_id,start_time,text)"),
    ("flickr30k", break_json_key, "{}: images[3].sentences[1]: missing key 'raw'"),
    ("msvd-qa", remove("YouTubeClips", f"{FX.MSVD_CLIPS[3]}.avi"),
     "media file {} does not exist (1 missing file(s), 2 sample(s); --skip-missing drops them)"),
    ("clotho-aqa", remove("clotho_aqa_test.csv"), "{}: not found (expected Clotho-AQA's test CSV)"),
])
def test_errors_leave_out_untouched(tmp_path, capsys, dataset, breaker, message):
    src = FX.WRITERS[dataset](str(tmp_path / "src"))
    path = breaker(src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("old\n")                      # an older manifest stays as it was
    assert fails(capsys, [dataset, "--src", src, "--out", str(out)]) == "error: " + message.format(path)
    assert os.listdir(out) == ["train.jsonl"] and (out / "train.jsonl").read_text() == "old\n"
    fresh = tmp_path / "fresh"
    fails(capsys, [dataset, "--src", src, "--out", str(fresh)])
    assert not fresh.exists()                                        # nor is a new --out created


def test_skip_missing_drops_and_reports(tmp_path, capsys):
    src = FX.write_audiocaps(str(tmp_path / "src"))
    os.remove(os.path.join(src, "audio", "train", "UDGBjjwyaqE.wav"))
    os.remove(os.path.join(src, "audio", "test", "--0w1YA1Hm4.wav"))
    out = str(tmp_path / "out")
    msg = fails(capsys, ["audiocaps", "--src", src, "--out", out])
    assert msg.startswith(f"error: media file {os.path.join(src, 'audio', 'train', 'UDGBjjwyaqE.wav')} does not exist "
                          f"(2 missing file(s), 2 sample(s);")
    convert.main(["audiocaps", "--src", src, "--out", out, "--skip-missing"])
    assert capsys.readouterr().out.splitlines() == ["skipped 2 sample(s) whose media is missing (2 file(s))",
                                                    f"wrote 2 train / 1 test samples to {out}"]
    train, test = expected("audiocaps", src)
    assert rows(os.path.join(out, "train.jsonl")) == [train[0], train[2]]
    assert rows(os.path.join(out, "test.jsonl")) == [test[1]]


def test_more_layout_errors(tmp_path, capsys):
    src = FX.write_msvd_qa(str(tmp_path / "msvd"))
    with open(os.path.join(src, "youtube_mapping.txt"), "a") as f:
        f.write("broken-line\n")
    mapping = os.path.join(src, "youtube_mapping.txt")
    assert fails(capsys, ["msvd-qa", "--src", src, "--out", str(tmp_path / "o")]) == \
        f"error: {mapping}:5: expected '<youtube clip name> vid<N>', got 'broken-line'"
    src = FX.write_llava(str(tmp_path / "llava"))
    with open(os.path.join(src, "test.json"), "w") as f:
        json.dump([{"question_id": 1, "image": "images/farm.jpg", "question": "?"}], f)
    assert fails(capsys, ["llava", "--src", src, "--out", str(tmp_path / "o")]) == \
        f"error: {os.path.join(src, 'test.json')}: [0]: expected key 'conversations' (LLaVA) or 'text' + 'answer' (MLLM-CL)"
    src = FX.write_alpaca(str(tmp_path / "alpaca"))
    assert "leave none for training after --test-size 200" in fails(capsys, ["alpaca", "--src", src, "--out", str(tmp_path / "o")])
    assert fails(capsys, ["okvqa", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == \
        f"error: --src {tmp_path / 'nowhere'}: not a directory"
    src = FX.write_flickr30k(str(tmp_path / "flickr"))
    for fn in ("1000344755.jpg", "1000366164.jpg"):
        os.remove(os.path.join(src, "flickr30k-images", fn))
    assert fails(capsys, ["flickr30k", "--src", src, "--out", str(tmp_path / "o"), "--skip-missing"]) == \
        f"error: {src}: no test samples for flickr30k (layout: python -m data.convert -h)"
    assert not (tmp_path / "o").exists()


def test_llava_image_root(tmp_path, capsys):
    src = FX.write_llava(str(tmp_path / "src"))
    (tmp_path / "shared").mkdir()
    os.rename(os.path.join(src, "images"), str(tmp_path / "shared" / "images"))
    out = str(tmp_path / "out")
    assert fails(capsys, ["llava", "--src", src, "--out", out]).startswith(
        f"error: media file {os.path.join(src, 'images', 'farm.jpg')} does not exist (3 missing file(s), 6 sample(s)")
    convert.main(["llava", "--src", src, "--out", out, "--image-root", str(tmp_path / "shared")])
    train, _ = expected("llava", str(tmp_path / "shared"))
    assert rows(os.path.join(out, "train.jsonl")) == train


def test_llava_sets_mllm_cl_rule_per_domain(tmp_path, capsys):
    """MLLM-CL's release names each domain's / ability's folder; its evaluation scores each by its own rule."""
    for folder, rule in (("RS", "contains"), ("Med", "contains"), ("AD", "contains"), ("Fin", "exact"),
                         ("OCR_test", "contains"), ("VP_test", "contains"), ("APP_test", "letter"), ("Math", "exact")):
        src = FX.write_llava(str(tmp_path / folder))
        convert.main(["llava", "--src", src, "--out", str(tmp_path / f"{folder}-out")])
        got = {r["metric"] for split in ("train", "test") for r in rows(tmp_path / f"{folder}-out" / f"{split}.jsonl")}
        assert got == {rule}, folder
    # Sci: exact for its multiple-choice sources (image names AI2D_*, TQA_*, ...), substring for the rest (MapQA)
    src = FX.write_llava(str(tmp_path / "Sci"))
    os.rename(os.path.join(src, "images", "farm.jpg"), os.path.join(src, "images", "AI2D_farm.jpg"))
    for name in ("train.json", "test.json"):
        with open(os.path.join(src, name)) as f:
            items = f.read().replace("images/farm.jpg", "images/AI2D_farm.jpg")
        with open(os.path.join(src, name), "w") as f:
            f.write(items)
    convert.main(["llava", "--src", src, "--out", str(tmp_path / "sci-out")])
    test = rows(tmp_path / "sci-out" / "test.jsonl")
    assert [(os.path.basename(r["media"]), r["metric"]) for r in test] == [
        ("port.jpg", "contains"), ("lake.jpg", "contains"), ("AI2D_farm.jpg", "exact")]
    convert.main(["llava", "--src", src, "--out", str(tmp_path / "flag-out"), "--metric", "letter"])   # the flag wins
    assert {r["metric"] for r in rows(tmp_path / "flag-out" / "test.jsonl")} == {"letter"}
    assert [s.metric for s in read_manifest(str(tmp_path / "flag-out" / "test.jsonl"), "sci")] == ["letter"] * 3


def test_write_failure_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    src = FX.write_msvd_qa(str(tmp_path / "src"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("old\n")

    def full_disk(a, b):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(convert.os, "replace", full_disk)
    assert fails(capsys, ["msvd-qa", "--src", src, "--out", str(out)]) == \
        f"error: --out {out}: cannot write the manifests (OSError: No space left on device)"
    assert os.listdir(out) == ["train.jsonl"] and (out / "train.jsonl").read_text() == "old\n"
    monkeypatch.undo()
    (tmp_path / "file").write_text("")
    assert fails(capsys, ["msvd-qa", "--src", src, "--out", str(tmp_path / "file")]).startswith(
        f"error: --out {tmp_path / 'file'}: cannot write the manifests (FileExistsError")
