"""The path to the papers' real benchmarks: VQA accuracy, annotator answers in manifests, media as releases store it
(JPEG, AVI, 32 / 44.1 / 48 kHz stereo WAV / FLAC), any task sequence (--tasks), an optional text-only set and the
LLM's chat template. Converters themselves: test_convert.py."""
import json
import os

import numpy as np
import pytest
import torch

import common as C
import data.load as L
from conftest import run_script
from data import generate as G
from data.score import vqa_accuracy


# ---------------------------------------------------------------------------------------------- scoring
def test_vqa_accuracy_hand_computed():
    ten = ["dog"] * 2 + ["cat"] * 5 + ["a puppy"] * 3
    assert vqa_accuracy("dog", ten) == pytest.approx(200 / 3)        # 2 of 10 annotators -> 66.7
    assert vqa_accuracy("Cat.", ten) == 100.0                         # 5 >= 3 -> 100, after normalisation
    assert vqa_accuracy("the puppy", ten) == 100.0                    # articles stripped: 3 -> 100
    assert vqa_accuracy("bird", ten) == 0.0
    assert vqa_accuracy("two", ["2", "two", "3"]) == pytest.approx(200 / 3)   # number words -> digits: 2 of 3
    assert vqa_accuracy("yes", ["yes", "no", "no"]) == pytest.approx(100 / 3)


def test_score_uses_vqa_accuracy_only_with_annotators():
    mk = lambda answers, annotators=None: L.Sample("x", "image", "q?", answers[0], answers, annotators=annotators)
    samples = [mk(["dog", "puppy"]), mk(["dog", "cat"], ["dog", "cat", "cat", "cat"])]
    # sample 1: exact match against a synonym list -> 100; sample 2: 1 of 4 annotators said dog -> 33.3
    assert C.score_predictions(samples, ["puppy", "dog"]) == pytest.approx((100 + 100 / 3) / 2)
    assert C.score_predictions(samples[:1], ["cat"]) == 0.0


def test_manifest_annotators(tmp_path):
    img = tmp_path / "x.png"
    G.render_image(G.sample_image_attrs(np.random.default_rng(0)), np.random.default_rng(0)).save(img)
    row = {"modality": "image", "media": str(img), "instruction": "what?", "target": "dog", "answers": ["dog", "cat"],
           "annotators": ["dog", "dog", "cat"]}
    (tmp_path / "ok.jsonl").write_text(json.dumps(row) + "\n")
    assert L.read_manifest(str(tmp_path / "ok.jsonl"), "t")[0].annotators == ["dog", "dog", "cat"]
    for bad in ({"annotators": "dog"}, {"annotators": []}, {"answers": None}):
        (tmp_path / "bad.jsonl").write_text(json.dumps({k: v for k, v in dict(row, **bad).items() if v is not None}) + "\n")
        with pytest.raises(SystemExit, match="bad.jsonl:1: 'annotators'"):
            L.read_manifest(str(tmp_path / "bad.jsonl"), "t")


# ---------------------------------------------------------------------------------------------- media
def test_jpeg_and_avi_and_mp4(tmp_path):
    import av
    from PIL import Image
    frames = [np.full((32, 48, 3), 20 * i, np.uint8) for i in range(10)]
    Image.fromarray(frames[5]).save(tmp_path / "x.jpg", quality=95)
    assert L.load_image(str(tmp_path / "x.jpg")).shape == (32, 48, 3)
    for ext, codec in (("avi", "mpeg4"), ("mp4", "libx264")):
        with av.open(str(tmp_path / f"v.{ext}"), "w") as c:
            st = c.add_stream(codec, rate=10)
            st.width, st.height, st.pix_fmt = 48, 32, "yuv420p"
            for f in frames:
                c.mux(st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            c.mux(st.encode())
        v = L.load_video(str(tmp_path / f"v.{ext}"))
        assert v.shape == (L.VIDEO_FRAMES, 32, 48, 3)
        assert v[0].mean() < 15 and v[-1].mean() > 160            # first and last frame, in order


@pytest.mark.parametrize("sr,fmt", [(32000, "WAV"), (44100, "WAV"), (48000, "FLAC")])
def test_stereo_audio_at_release_rates_is_resampled(tmp_path, sr, fmt):
    import soundfile as sf
    t = np.arange(int(0.5 * sr)) / sr
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    alias = 0.5 * np.sin(2 * np.pi * 12000 * t)          # above 8 kHz: must not fold into the 16 kHz signal
    sf.write(tmp_path / f"a.{fmt.lower()}", np.stack([tone + alias, tone], 1), sr, format=fmt)
    wav = L.load_audio(str(tmp_path / f"a.{fmt.lower()}"), 16000)
    assert wav.dtype == np.float32 and wav.shape == (8000,)                # mono, 0.5 s at 16 kHz
    spec = np.abs(np.fft.rfft(wav))
    assert np.argmax(spec) == 220                                           # 440 Hz (bins of 2 Hz)
    assert spec[200:240].max() > 20 * spec[1000:].max()                     # nothing aliased in (12 kHz -> 4 kHz)


# ---------------------------------------------------------------------------------------------- chat template
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _chat_model(template=TEMPLATE):
    from conftest import tiny_mllm
    m = tiny_mllm(["what", "colour", "?", "red", "blue", "image", ":", "answer"], {"image": 8})
    m.tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    m.tok.chat_template = template
    m.llm.resize_token_embeddings(len(m.tok))
    m.chat = True
    return m


def test_chat_template_prompt_and_labels():
    m = _chat_model()
    s = L.Sample("1", "image", "what colour ?", "red", ["red"], feat=torch.zeros(3, 8))
    b = m.collate([s])
    words = m.tok.convert_ids_to_tokens(b.input_ids[0].tolist())
    k = words.index("image")
    # user turn: template token, cue, 3 media positions, instruction, end of turn; then the assistant turn
    assert words[:k] == ["<|user|>"] and b.media_mask[0].sum() == 3 and bool(b.media_mask[0, k + 2: k + 5].all())
    assert words[k + 5: k + 12] == ["what", "colour", "?", "</s>", "<|assistant|>", "red", "</s>"]
    labelled = [w for w, l in zip(words, b.labels[0].tolist()) if l != -100]
    assert labelled == ["red", "</s>"]                                      # labels on the assistant's tokens only
    plain = _chat_model()
    plain.chat = False
    assert m.tok.convert_ids_to_tokens(plain.collate([s]).input_ids[0].tolist())[-2:] == ["red", "</s>"]
    out = m.generate([s], max_new_tokens=3)                                 # decodes through the same prompt
    assert len(out) == 1 and isinstance(out[0], str)


def test_chat_template_that_does_not_end_with_eos_is_refused():
    m = _chat_model(TEMPLATE.replace(" </s> ", " "))
    with pytest.raises(SystemExit, match="--chat-template"):
        m.collate([L.Sample("1", "text", "what colour ?", "red", ["red"])])


def test_chat_template_flag_without_template_is_one_line(tmp_path):
    r = run_script("baselines.py", tmp_path / "r", "--method", "finetune", "--chat-template", "--tasks", "image-qa",
                   "--max-steps", "1", "--test-limit", "2", "--train-limit", "4", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["error: --chat-template: the tokenizer of --llm tiny has no chat template"]


# ---------------------------------------------------------------------------------------------- --tasks, text set
SHORT = ["--max-steps", "1", "--epochs", "1", "--train-limit", "4", "--test-limit", "2"]


def test_tasks_flag_runs_any_sequence_and_names_the_run(tmp_path):
    import common
    args = common.parse_args(common.shared_parser("finetune", "x"), ["--tasks", "video-qa,image-cap"])
    assert args.task_names == ["video-qa", "image-cap"] and args.scenario == "custom"
    assert args.output_dir == os.path.join("runs", "finetune__custom__video-qa+image-cap__seed0")
    r = run_script("baselines.py", tmp_path / "r", "--method", "finetune", "--tasks", "video-qa,image-cap", *SHORT)
    res = json.load(open(tmp_path / "r" / "results.json"))
    assert res["tasks"] == ["video-qa", "image-cap"] and len(res["R"]) == 2 and "text_retention" in res["metrics"]
    assert res["args"]["order"] == "video-qa+image-cap", r.stdout


@pytest.mark.parametrize("flags,msg", [
    (["--tasks", "image-qa,image-qa"], "distinct task folder names"),
    (["--tasks", "image-qa", "--scenario", "dcl"], "give one of them"),
    (["--tasks", "image-qa,sketch-qa"], "['sketch-qa'] are not synthetic tasks"),
])
def test_bad_task_sequences_are_one_line(tmp_path, flags, msg):
    r = run_script("baselines.py", tmp_path / "r", "--method", "finetune", *flags, *SHORT, check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert msg in r.stderr


@pytest.fixture(scope="module")
def root_without_text(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("root"))
    for t in ("audio-qa", "image-cap"):
        G.write_task(root, t, seed=0, sizes={"train": 4, "test": 2})
    return root


def test_data_root_without_text_set(root_without_text, tmp_path):
    run_script("baselines.py", tmp_path / "r", "--method", "finetune", "--data-root", root_without_text,
               "--tasks", "audio-qa,image-cap", *SHORT)
    res = json.load(open(tmp_path / "r" / "results.json"))
    assert "text_retention" not in res["metrics"] and "text_base" not in res["metrics"] and res["text"] == [None, None]
    r = run_script("moincl.py", tmp_path / "m", "--data-root", root_without_text, "--tasks", "audio-qa,image-cap",
                   *SHORT, check=False)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert "IKD needs a text-only instruction set" in r.stderr and "--no-ikd" in r.stderr
    run_script("moincl.py", tmp_path / "m2", "--data-root", root_without_text, "--tasks", "audio-qa,image-cap",
               "--no-ikd", *SHORT)
    r = run_script("baselines.py", tmp_path / "x", "--method", "finetune", "--data-root", root_without_text,
                   "--tasks", "audio-qa,video-cap", *SHORT, check=False)
    assert r.returncode != 0 and "no folder video-cap/" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def converted_root(tmp_path_factory):
    """The six MoInCL datasets, an LLaVA-style domain set and an Alpaca text set, each written in its official
    layout (tests/fixtures.py) and converted with data.convert into one --data-root."""
    import fixtures
    from data.convert import main as convert
    src, root = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("root")
    for dataset, task in [("okvqa", "image-qa"), ("flickr30k", "image-cap"), ("msrvtt", "video-cap"),
                          ("msvd-qa", "video-qa"), ("audiocaps", "audio-cap"), ("clotho-aqa", "audio-qa"),
                          ("llava", "dcl-rs"), ("alpaca", "text")]:
        folder = "RS" if dataset == "llava" else dataset      # MLLM-CL's folder name for remote sensing
        fixtures.WRITERS[dataset](str(src / folder))
        convert([dataset, "--src", str(src / folder), "--out", str(root / task)] +
                (["--test-size", "2"] if dataset == "alpaca" else []))
    return str(root)


def test_converted_okvqa_then_finetune_end_to_end(converted_root, tmp_path):
    """The issue's acceptance command: converted OK-VQA + Flickr30k, any order via --tasks."""
    run_script("baselines.py", tmp_path / "r", "--method", "finetune", "--data-root", converted_root,
               "--tasks", "image-qa,image-cap", "--max-steps", "2")
    res = json.load(open(tmp_path / "r" / "results.json"))
    assert res["tasks"] == ["image-qa", "image-cap"] and len(res["R"]) == 2 and "text_retention" in res["metrics"]


def test_all_converted_formats_in_one_moincl_run(converted_root, tmp_path):
    """JPEG, MP4, AVI, 44.1 / 48 kHz stereo WAV, annotator answers and an Alpaca text set (for IKD) in one run."""
    order = "audio-cap,image-cap,video-qa,audio-qa,image-qa,video-cap,dcl-rs"
    run_script("moincl.py", tmp_path / "m", "--data-root", converted_root, "--tasks", order, "--max-steps", "1",
               "--batch-size", "2", "--pseudo-per-batch", "1", "--ikd-per-batch", "1")
    res = json.load(open(tmp_path / "m" / "results.json"))
    assert res["tasks"] == order.split(",") and len(res["R"]) == 7 and res["text"][-1] is not None
    # each task scored by its benchmark's rule, which its converter wrote into the manifest
    assert res["scoring"] == {"audio-cap": "cider", "image-cap": "cider", "video-qa": "exact", "audio-qa": "vqa",
                              "image-qa": "vqa", "video-cap": "cider", "dcl-rs": "contains", "text": "exact"}
    assert "dcl-rs: VQA-processed answer in prediction" in open(tmp_path / "m" / "results.md").read()
