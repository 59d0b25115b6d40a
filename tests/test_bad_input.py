"""Bad input sweep (issue #23): every kind of bad input a user can give ends with exactly one line on stderr that
starts with `error:` and names the thing, exit status 1, no traceback, and no results.json or half-written file that
a later run would take for finished; input that is merely unusual but valid works. Most checks call the loaders
in-process (a UserError is the SystemExit the script ends with); a handful of whole-script runs show the rest.

| kind        | input                                                  | how it ends                                          |
|-------------|--------------------------------------------------------|------------------------------------------------------|
| manifest    | a line that is not JSON                                | error: <file>:<line>: not valid JSON (...)           |
|             | bytes that are not UTF-8                               | error: <file>:<line>: not UTF-8 text (...)           |
|             | a BOM at the start                                     | works (read as UTF-8 with BOM)                       |
|             | a BOM in the middle (two files concatenated)           | error: <file>:<line>: not valid JSON (... BOM ...)   |
|             | an empty / blank line in the middle, CRLF line ends   | works (blank lines skipped)                          |
|             | a non-string field (instruction 5, id [1], media 5)    | error: <file>:<line>: names the field                |
|             | answers that are not a list of strings                 | error: <file>:<line>: 'answers' must be ...          |
|             | duplicate ids                                          | error: <file>:<line>: duplicate id 'x' (first on ...)|
|             | a media path that is a directory                       | error: <file>:<line>: media path <p> is a directory  |
|             | a manifest path that is a directory                    | error: <file>: is a directory ...                    |
| media       | a truncated PNG                                        | error: <file>: not a readable image (OSError)        |
|             | a zero-byte WAV                                        | error: <file>: not a readable audio file (...)       |
|             | a WAV with a header and no samples                     | error: <file>: the audio file holds no samples       |
|             | an MP4 without a video stream (audio only)             | error: <file>: has no video stream (...)             |
|             | a video of one frame                                   | works (the frame is sampled 8 times)                 |
|             | silence                                                | works (finite features)                              |
|             | a 1x1 image, a 4000x3000 image, a greyscale image      | works (resized by the image processor)               |
| flags       | --lr -1 / 0 / nan / inf, --router-lr -1, --realign-lr 0 | error: --<flag> must be > 0 / a finite number       |
|             | --test-limit 0, --train-limit -1, --max-steps 0, ...   | error: --<flag> must be >= 1, got <v>                |
|             | --epochs 0, --batch-size 0, --lwf-temperature 0, ...   | error: --<flag> must be ...                          |
|             | --output-dir that is a file                            | error: --output-dir <p>: is a file, not a folder     |
|             | --data-root missing one task of the order              | error: <root>/<task>/train.jsonl: manifest not found |
| model flags | --llm / --image-encoder / --audio-encoder naming       | error: <flag> <path>: holds a 'vit' model, not a     |
|             | another model kind, an empty folder, a file, a folder  | causal language model / is a file / the folder is    |
|             | without config.json, config.json without weights, a    | empty / no weights (...) (a half-downloaded          |
|             | truncated model.safetensors, a missing weight shard    | checkpoint?) / ... is truncated                      |
|             | a hub id that is not a local path                      | as before: from_pretrained (no network here)         |
| checkpoints | a truncated resume.pt (or a missing one) on --resume   | error: --resume: <p>/resume.pt is not a readable ... |
|             | a state.json that is not JSON on --resume              | error: --resume: <p>/state.json is not a readable ...|
"""
import json
import os
import shutil
from types import SimpleNamespace

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import common as C
import data.load as L
from conftest import run_script
from data import generate as G

TASKS = C.ORDERS["micl"][1]
QUICK = ["--train-limit", "4", "--test-limit", "2", "--max-steps", "1", "--epochs", "1"]


def msg(excinfo):
    m = str(excinfo.value.code)
    assert m.startswith("error: ") and "\n" not in m, m
    return m


@pytest.fixture(scope="module")
def base_root(tmp_path_factory):
    """A small micl data root: 4 train / 2 test samples per task (real PNG / WAV / MP4 files) + the text set."""
    root = str(tmp_path_factory.mktemp("data"))
    for t in TASKS:
        G.write_task(root, t, seed=0, sizes={"train": 4, "test": 2})
    G.write_text_task(root, 0)
    return root


@pytest.fixture
def root(base_root, tmp_path):
    """A copy of base_root to spoil."""
    return shutil.copytree(base_root, str(tmp_path / "data"))


@pytest.fixture(scope="module")
def tiny():
    from data.tiny import build_tiny
    return build_tiny()


def lines(path):
    with open(path) as f:
        return f.read().splitlines()


def write_lines(path, rows, encoding="utf-8", end="\n"):
    with open(path, "w", encoding=encoding, newline="") as f:
        f.write("".join((r if isinstance(r, str) else json.dumps(r)) + end for r in rows))


def run(out, *flags, process=False):
    return run_script("baselines.py", out, *QUICK, *flags, check=False, process=process)


def assert_one_error_line(r, *expect):
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr
    got = r.stderr.strip().splitlines()
    assert len(got) == 1 and got[0].startswith("error: "), r.stderr[-3000:]
    for e in expect:
        assert e in got[0], got[0]
    return got[0]


def nothing_finished(out):
    """No results.json and no temp file that a later run could take for finished."""
    files = [os.path.join(r, n) for r, ds, fs in os.walk(out) for n in ds + fs]
    return not any(f.endswith("results.json") or ".tmp" in f for f in files)


# ---------------------------------------------------------------------------------------------- manifests
GOOD = {"id": "a", "modality": "text", "instruction": "what is one plus one ?", "target": "two", "answers": ["two"]}


@pytest.mark.parametrize("rows, expect", [
    ([GOOD, '{"id": "b", "modality": '], ":2: not valid JSON"),
    ([GOOD, b'{"id": "b", "modality": "text", "instruction": "caf\xe9", "target": "x"}'], ":2: not UTF-8 text"),
    ([GOOD, "\ufeff" + json.dumps(dict(GOOD, id="b"))], ":2: not valid JSON (Unexpected UTF-8 BOM"),
    ([dict(GOOD, instruction=5)], ":1: missing or empty 'instruction'"),
    ([dict(GOOD, target=["two"])], ":1: missing or empty 'target'"),
    ([dict(GOOD, id=[1])], ":1: 'id' must be a non-empty string or an integer, got [1]"),
    ([dict(GOOD, modality="image", media=5)], ":1: a image sample needs a 'media' path"),
    ([dict(GOOD, answers=[2])], ":1: 'answers' must be a non-empty list of strings"),
    ([GOOD, dict(GOOD, instruction="what is two plus two ?")], ":2: duplicate id 'a' (first on line 1)"),
    ([dict(GOOD, id=7), dict(GOOD, id="7")], ":2: duplicate id '7' (first on line 1)"),
    ([dict(GOOD, modality="image", media="media")], ":1: media path "),
])
def test_bad_manifest(tmp_path, rows, expect):
    (tmp_path / "media").mkdir()
    p = tmp_path / "train.jsonl"
    p.write_bytes(b"".join((r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()) + b"\n"
                           for r in rows))
    with pytest.raises(C.UserError) as e:
        L.read_manifest(str(p), "t")
    m = msg(e)
    assert m.startswith(f"error: {p}") and expect in m, m


def test_manifest_that_is_a_directory(tmp_path):
    (tmp_path / "train.jsonl").mkdir()
    with pytest.raises(C.UserError, match="is a directory, expected a JSONL manifest file"):
        L.read_manifest(str(tmp_path / "train.jsonl"), "t")


def test_unusual_but_valid_manifest(tmp_path):
    """A BOM at the start, blank lines in the middle and CRLF line ends are read as the plain file is."""
    rows = [dict(GOOD, id=str(i), target=f"t{i}") for i in range(3)]
    write_lines(tmp_path / "plain.jsonl", rows)
    write_lines(tmp_path / "odd.jsonl", [rows[0], "", "   ", rows[1], "\t", rows[2]], encoding="utf-8-sig", end="\r\n")
    plain, odd = (L.read_manifest(str(tmp_path / f), "t") for f in ("plain.jsonl", "odd.jsonl"))
    assert [(s.id, s.instruction, s.target, s.answers) for s in odd] == [(s.id, s.instruction, s.target, s.answers) for s in plain]
    assert [s.id for s in odd] == ["0", "1", "2"]


# ---------------------------------------------------------------------------------------------- media
def _audio_only_mp4(path):
    with av.open(path, "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in list(s.encode(frame)) + list(s.encode()):
            c.mux(p)


def test_bad_media(base_root, tmp_path):
    png = open(os.path.join(base_root, "image-cap", "media", "train_0000.png"), "rb").read()
    (tmp_path / "truncated.png").write_bytes(png[:len(png) // 2])
    (tmp_path / "zero.wav").write_bytes(b"")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    _audio_only_mp4(str(tmp_path / "audio_only.mp4"))
    for load, name, expect in [(L.load_image, "truncated.png", "not a readable image"),
                               (lambda p: L.load_audio(p, 16000), "zero.wav", "not a readable audio file"),
                               (lambda p: L.load_audio(p, 16000), "empty.wav", "the audio file holds no samples"),
                               (L.load_video, "audio_only.mp4", "has no video stream")]:
        with pytest.raises(C.UserError) as e:
            load(str(tmp_path / name))
        assert msg(e).startswith(f"error: {tmp_path / name}: {expect}")


def unusual_media(d):
    """Valid media at the edges: 1x1, 4000x3000 and greyscale images, silence, a video of one frame."""
    Image.new("RGB", (1, 1), (200, 30, 30)).save(f"{d}/one_pixel.png")
    Image.new("RGB", (4000, 3000), (30, 30, 200)).save(f"{d}/huge.png")
    Image.new("L", (40, 40), 120).save(f"{d}/grey.png")
    sf.write(f"{d}/silence.wav", np.zeros(int(G.SR * G.AUDIO_SECONDS), np.float32), G.SR, subtype="PCM_16")
    G.write_mp4(f"{d}/one_frame.mp4", np.full((1, G.IMG, G.IMG, 3), 90, np.uint8))
    return {"image": ["one_pixel.png", "huge.png", "grey.png"], "audio": ["silence.wav"], "video": ["one_frame.mp4"]}


def test_unusual_but_valid_media_encode(tiny, tmp_path):
    enc = L.Encoders(tiny["image"], tiny["audio"], "cpu")
    shapes = {"image": L.IMAGE_TOKENS, "audio": L.AUDIO_TOKENS, "video": L.VIDEO_GROUPS * L.VIDEO_TOKENS}
    for modality, names in unusual_media(str(tmp_path)).items():
        for f in enc(modality, [str(tmp_path / n) for n in names]):
            assert f.shape[0] == shapes[modality] and bool(f.isfinite().all())
    assert L.load_video(str(tmp_path / "one_frame.mp4")).shape == (L.VIDEO_FRAMES, G.IMG, G.IMG, 3)


# ---------------------------------------------------------------------------------------------- flags
@pytest.mark.parametrize("script, flags, expect", [
    ("baselines", ["--lr", "-1"], "--lr must be > 0, got -1.0"),
    ("baselines", ["--lr", "0"], "--lr must be > 0, got 0.0"),
    ("baselines", ["--lr", "nan"], "--lr must be a finite number, got nan"),
    ("baselines", ["--lr", "inf"], "--lr must be a finite number, got inf"),
    ("baselines", ["--test-limit", "0"], "--test-limit must be >= 1, got 0"),
    ("baselines", ["--train-limit", "-1"], "--train-limit must be >= 1, got -1"),
    ("baselines", ["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    ("baselines", ["--lora-alpha", "0"], "--lora-alpha must be >= 1, got 0"),
    ("baselines", ["--epochs", "0"], "--epochs must be >= 1, got 0"),
    ("baselines", ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ("baselines", ["--method", "lwf", "--lwf-temperature", "0"], "--lwf-temperature must be > 0"),
    ("baselines", ["--method", "ewc", "--ewc-lambda", "-1"], "--ewc-lambda must be >= 0"),
    ("baselines", ["--replay-ratio", "0"], "--replay-ratio must be in (0, 1]"),
    ("moincl", ["--kd-weight", "-1"], "--kd-weight must be >= 0"),
    ("mr_lora", ["--router-lr", "-1"], "--router-lr > 0"),
    ("mr_lora", ["--router-projector-lr", "0"], "--router-projector-lr > 0"),
    ("mera", ["--realign-lr", "0"], "--realign-lr must be > 0, got 0.0"),
])
def test_out_of_range_flags(script, flags, expect, tmp_path):
    import importlib
    with pytest.raises(C.UserError) as e:
        C.check_flags(importlib.import_module(script).get_args(["--output-dir", str(tmp_path / "o"), *flags]))
    assert expect in msg(e)
    assert not (tmp_path / "o").exists()


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    import baselines
    with pytest.raises(C.UserError) as e:
        C.check_flags(baselines.get_args(["--output-dir", str(tmp_path / "f")]))
    assert msg(e) == f"error: --output-dir {tmp_path / 'f'}: is a file, not a folder"
    args = SimpleNamespace(output_dir=str(tmp_path / "f"), resume=False)
    with pytest.raises(C.UserError, match="is a file, not a folder"):           # Run checks it too
        C.Run(args, [L.Task("t", [], [])], L.Task("text", [], []))
    assert (tmp_path / "f").read_text() == "x"


def test_data_root_missing_a_task(root):
    shutil.rmtree(os.path.join(root, "video-qa"))
    import baselines
    with pytest.raises(C.UserError) as e:
        L.load_tasks(baselines.get_args(["--data-root", root]))
    assert msg(e) == (f"error: --data-root {root}: no folder video-qa/ for task 'video-qa' of the task sequence "
                      f"(expected <data-root>/video-qa/{{train,test}}.jsonl; convert with python -m data.convert)")
    os.makedirs(os.path.join(root, "video-qa"))                # the folder without its manifests
    with pytest.raises(C.UserError) as e:
        L.load_tasks(baselines.get_args(["--data-root", root]))
    assert msg(e) == f"error: {root}/video-qa/train.jsonl: manifest not found (expected <data-root>/<task>/{{train,test}}.jsonl)"


# ---------------------------------------------------------------------------------------------- model folders
@pytest.fixture(scope="module")
def spoilt_models(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    (d / "empty").mkdir()
    (d / "file").write_text("not a model")
    (d / "no_config").mkdir()
    (d / "no_config" / "model.safetensors").write_bytes(b"")
    for name, drop in [("no_weights", "model.safetensors"), ("truncated", None), ("sharded", "model.safetensors"),
                       ("bad_config", None)]:
        shutil.copytree(tiny["llm"], d / name)
        if drop:
            os.remove(d / name / drop)
    w = open(os.path.join(tiny["llm"], "model.safetensors"), "rb").read()
    (d / "truncated" / "model.safetensors").write_bytes(w[:len(w) // 2])           # an interrupted download
    (d / "sharded" / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (d / "sharded" / "model-00001-of-00002.safetensors").write_bytes(w)
    (d / "bad_config" / "config.json").write_text("{not json")
    return d


@pytest.mark.parametrize("flag, kind, which, expect", [
    ("--llm", "llm", "image", "holds a 'vit' model, not a causal language model"),
    ("--llm", "llm", "audio", "holds a 'audio-spectrogram-transformer' model, not a causal language model"),
    ("--image-encoder", "image", "llm", "holds a 'llama' model, not an image (vision) encoder"),
    ("--image-encoder", "image", "audio", "holds a 'audio-spectrogram-transformer' model, not an image (vision) encoder"),
    ("--audio-encoder", "audio", "image", "holds a 'vit' model, not an audio encoder"),
    ("--audio-encoder", "audio", "llm", "holds a 'llama' model, not an audio encoder"),
    ("--llm", "llm", "empty", "the folder is empty, expected a Hugging Face folder holding a causal language model"),
    ("--image-encoder", "image", "file", "is a file, expected a Hugging Face folder holding an image (vision) encoder"),
    ("--audio-encoder", "audio", "no_config", "no config.json, expected a Hugging Face folder holding an audio encoder"),
    ("--llm", "llm", "no_weights", "no weights (model.safetensors or pytorch_model.bin) (a half-downloaded checkpoint?)"),
    ("--llm", "llm", "truncated", "model.safetensors is truncated (a half-downloaded checkpoint?)"),
    ("--llm", "llm", "sharded", "1 of 2 weight shards are missing (e.g. model-00002-of-00002.safetensors)"),
    ("--llm", "llm", "bad_config", "config.json is not a readable model config"),
])
def test_model_flag_that_names_no_such_model(tiny, spoilt_models, flag, kind, which, expect):
    path = tiny[which] if which in tiny else str(spoilt_models / which)
    with pytest.raises(C.UserError) as e:
        L.check_model_dir(path, flag, kind)
    assert msg(e).startswith(f"error: {flag} {path}: ") and expect in msg(e)
    with pytest.raises(C.UserError) as e:      # the loaders check too, before from_pretrained
        L.load_llm(path, "cpu") if kind == "llm" else L.Encoders(*((path, tiny["audio"]) if kind == "image" else (tiny["image"], path)), "cpu")
    assert expect in msg(e)


def test_real_model_folders_and_hub_ids_pass(tiny):
    for kind in ("llm", "image", "audio"):
        L.check_model_dir(tiny[kind], "--x", kind)
    L.check_model_dir("Qwen/Qwen2.5-0.5B", "--llm", "llm")        # a hub id: left to from_pretrained (as before)
    with pytest.raises(C.UserError, match="--llm /no/such/model: path does not exist"):
        L.check_model_dir("/no/such/model", "--llm", "llm")


# ---------------------------------------------------------------------------------------------- whole script
@pytest.mark.parametrize("case", ["llm is an image encoder", "negative lr", "not JSON", "missing task", "truncated PNG"])
def test_whole_script_one_line(case, tiny, root, tmp_path):
    """The line on stderr of the script itself; two cases as a process (what a user sees), the rest in-process."""
    out, flags = tmp_path / "out", ["--data-root", root]
    if case == "llm is an image encoder":                   # the issue: a 30-line sentencepiece / tiktoken traceback
        flags, expect = ["--llm", tiny["image"]], [f"--llm {tiny['image']}: holds a 'vit' model, not a causal language model"]
    elif case == "negative lr":
        flags, expect = ["--lr", "-0.001"], ["--lr must be > 0"]
    elif case == "not JSON":
        p = os.path.join(root, "image-cap", "train.jsonl")
        write_lines(p, lines(p)[:2] + ['{"id": "x", '] + lines(p)[2:])
        expect = [f"{p}:3: not valid JSON"]
    elif case == "missing task":
        shutil.rmtree(os.path.join(root, "audio-qa"))
        expect = [f"--data-root {root}: no folder audio-qa/ for task 'audio-qa'"]
    else:
        png = os.path.join(root, "image-qa", "media", "test_0001.png")
        data = open(png, "rb").read()
        open(png, "wb").write(data[:len(data) // 3])
        expect = [f"{png}: not a readable image"]
    assert_one_error_line(run(out, *flags, process=case in ("llm is an image encoder", "truncated PNG")), *expect)
    assert not out.exists()                                 # refused before anything was written


def test_unusual_input_runs_then_a_truncated_checkpoint_is_refused(root, tmp_path):
    """One run over the unusual-but-valid input (BOM, blank line in the middle, 1x1 / huge image, silence, one
    frame) works. Then, as if it had crashed after its last task: results.json gone, resume.pt truncated:
    --resume refuses in one line and writes nothing."""
    made = unusual_media(os.path.join(root, "image-cap", "media"))
    for task, modality in (("image-cap", "image"), ("audio-cap", "audio"), ("video-qa", "video")):
        if task != "image-cap":
            for n in made[modality]:
                shutil.move(os.path.join(root, "image-cap", "media", n), os.path.join(root, task, "media", n))
        p = os.path.join(root, task, "train.jsonl")
        rows = [json.loads(x) for x in lines(p)]
        for r, n in zip(rows, made[modality]):
            r["media"] = f"media/{n}"
        write_lines(p, rows[:2] + [""] + rows[2:], encoding="utf-8-sig")
    out = tmp_path / "out"
    r = run(out, "--data-root", root)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.load(open(out / "results.json"))
    assert all(np.isfinite(x) for row in res["R"] for x in row)
    os.remove(out / "results.json")
    ck = out / "checkpoints" / f"task5_{TASKS[5]}" / "resume.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    state = (out / "state.json").read_text()
    line = assert_one_error_line(run(out, "--data-root", root, "--resume"), f"--resume: {ck} is not a readable checkpoint")
    assert "without --resume" in line
    assert nothing_finished(out) and (out / "state.json").read_text() == state
    (out / "state.json").write_text(state[:len(state) // 2])
    args = SimpleNamespace(output_dir=str(out), resume=True, fingerprint={})
    with pytest.raises(C.UserError, match=r"--resume: .*state\.json is not a readable run state"):
        C.Run(args, [L.Task(t, [], []) for t in TASKS], L.Task("text", [], []))
