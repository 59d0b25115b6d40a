"""Synthetic data round-trips through pillow / soundfile / av, and bad input gives one-line errors."""
import json
import os

import numpy as np
import pytest

from common import UserError
from conftest import run_script
from data.load import load_audio, load_image, load_video, read_manifest
from data import generate as G


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    for t in ["image-cap", "audio-qa", "video-cap"]:
        G.write_task(root, t, seed=0, sizes={"train": 3, "test": 2})
    G.write_text_task(root, 0)
    return root


def test_generation_is_deterministic(tmp_path):
    G.write_task(str(tmp_path / "a"), "image-qa", 3, {"train": 4})
    G.write_task(str(tmp_path / "b"), "image-qa", 3, {"train": 4})
    ra = open(tmp_path / "a/image-qa/train.jsonl").read()
    assert ra == open(tmp_path / "b/image-qa/train.jsonl").read()
    assert (tmp_path / "a/image-qa/media/train_0000.png").read_bytes() == (tmp_path / "b/image-qa/media/train_0000.png").read_bytes()


def test_manifest_round_trip(small_root):
    rows = read_manifest(os.path.join(small_root, "audio-qa", "train.jsonl"), "audio-qa")
    assert len(rows) == 3 and all(r.answers == [r.target] for r in rows)
    assert all(os.path.isabs(r.media) and r.media.endswith(".wav") for r in rows)


def test_image_round_trip_keeps_colour(tmp_path):
    rng = np.random.default_rng(0)
    a = dict(shape="square", colour="blue", size="large", side="left", count=1)
    G.render_image(a, rng).save(tmp_path / "x.png")
    img = load_image(str(tmp_path / "x.png"))
    assert img.shape == (G.IMG, G.IMG, 3)
    assert tuple(img[20, 10]) == G.COLOURS["blue"]              # shape centre on the left, PNG is lossless
    assert img[:, G.IMG // 2 + 4:].max() < 60                  # right half: background only


def test_audio_round_trip_pitch(tmp_path):
    a = dict(pitch="high", pattern="steady", timbre="pure", count=1)
    import soundfile as sf
    sf.write(tmp_path / "x.wav", G.render_audio(a, np.random.default_rng(0)), G.SR, subtype="PCM_16")
    wav = load_audio(str(tmp_path / "x.wav"), G.SR)
    assert len(wav) == int(G.SR * G.AUDIO_SECONDS)
    peak = np.abs(np.fft.rfft(wav)).argmax() * G.SR / len(wav)
    assert abs(peak - G.PITCHES["high"]) / G.PITCHES["high"] < 0.07


def test_video_round_trip_direction(tmp_path):
    a = dict(shape="circle", colour="red", direction="right", speed="quickly")
    G.write_mp4(str(tmp_path / "x.mp4"), G.render_video(a, np.random.default_rng(0)))
    frames = load_video(str(tmp_path / "x.mp4"), num_frames=8)
    assert frames.shape == (8, G.IMG, G.IMG, 3)
    centroid = lambda f: np.argwhere(f[..., 0] > 150)[:, 1].mean()   # x of red pixels
    assert centroid(frames[-1]) - centroid(frames[0]) > 10           # moved right by ~3.2 px/frame


def _write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(r if isinstance(r, str) else json.dumps(r))
            f.write("\n")


@pytest.mark.parametrize("row, expect", [
    ({"modality": "image", "media": "x.png", "instruction": "describe the image."}, "'target'"),
    ({"modality": "smell", "media": "x.png", "instruction": "q", "target": "t"}, "unknown modality"),
    ({"modality": "image", "media": "missing.png", "instruction": "q", "target": "t"}, "does not exist"),
    ('{"modality": "image", "media": ', "not valid JSON"),
    ({"modality": "text", "instruction": "q", "target": "t", "answers": "t"}, "'answers'"),
])
def test_bad_manifest_lines(tmp_path, row, expect):
    (tmp_path / "x.png").write_bytes(b"")
    p = str(tmp_path / "train.jsonl")
    _write(p, [row])
    with pytest.raises(UserError) as e:
        read_manifest(p, "t")
    msg = str(e.value.code)
    assert expect in msg and f"{p}:1" in msg and "\n" not in msg


def test_empty_and_missing_manifest(tmp_path):
    p = str(tmp_path / "train.jsonl")
    open(p, "w").close()
    with pytest.raises(UserError, match="empty task"):
        read_manifest(p, "t")
    with pytest.raises(UserError, match="manifest not found"):
        read_manifest(str(tmp_path / "nope.jsonl"), "t")


@pytest.mark.parametrize("loader, name", [(load_image, "x.png"), (lambda p: load_audio(p, 16000), "x.wav"),
                                          (load_video, "x.mp4")])
def test_corrupt_media(tmp_path, loader, name):
    p = tmp_path / name
    p.write_bytes(b"this is not a media file" * 10)
    with pytest.raises(UserError) as e:
        loader(str(p))
    assert str(p) in str(e.value.code)


@pytest.mark.parametrize("flags, expect", [(["--order", "9"], "--order 9 is out of range"),
                                           (["--scenario", "nope"], "--scenario 'nope' is unknown"),
                                           (["--data-root", "/no/such/dir"], "--data-root /no/such/dir")])
def test_cli_bad_flags_one_line(flags, expect, tmp_path):
    r = run_script("baselines.py", tmp_path / "o", *flags, check=False)
    assert r.returncode != 0
    assert expect in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_val_split_holds_out_training_samples(tmp_path):
    """--val: the last training samples (as many as the test split, at most a fifth) become the evaluation split;
    test samples are never used."""
    from common import parse_args, shared_parser
    from data.load import load_tasks
    root = str(tmp_path)
    for t in ["dcl-rs", "dcl-med", "dcl-ad", "dcl-sci", "dcl-fin"]:
        G.write_task(root, t, seed=0, sizes={"train": 10, "test": 2})
    G.write_text_task(root, 0)
    flags = ["--scenario", "dcl", "--data-root", root]
    test_tasks, _ = load_tasks(parse_args(shared_parser("x", "x"), flags))
    args = parse_args(shared_parser("x", "x"), flags + ["--val"])
    tasks, text = load_tasks(args)
    assert args.run_name == "x-val" and "x-val__dcl" in args.output_dir
    for task, full in zip(tasks, test_tasks):
        assert [s.id for s in task.train] + [s.id for s in task.test] == [s.id for s in full.train]
        assert len(task.test) == 2 and not {s.id for s in task.test} & {s.id for s in task.train}
    assert len(text.test) == 200 and len(text.train) == 1800
    G.write_task(root, "dcl-rs", seed=0, sizes={"train": 8, "test": 4})       # at most a fifth: 1 of 8, not 4
    assert len(load_tasks(args)[0][0].test) == 1
    G.write_task(root, "dcl-rs", seed=0, sizes={"train": 4, "test": 2})       # a fifth of 4 is nothing
    with pytest.raises(UserError, match="--val: task dcl-rs has 4 training samples"):
        load_tasks(args)


def test_image_encoder_corpus_has_both_worlds_with_ignored_labels():
    """The tiny ViT's pretraining corpus: shapes images and dcl domain scenes; labels that do not apply are -1."""
    from data.tiny import _encoder_corpus
    media, labels = _encoder_corpus("image", n=60)
    assert len(media) == len(labels) == 90 and labels.shape[1] == 10
    scene = labels[:, 7] < len(G.DOMAIN_ORDER)                   # column 7: domain id (len(DOMAIN_ORDER) = shapes)
    assert scene.any() and (~scene).any()
    assert (labels[scene][:, [0, 1, 2, 3, 5, 6]] == -1).all() and (labels[~scene][:, 8:] == -1).all()
    assert (labels[:, 4] >= 1).all()                                # every image has a count


def test_feature_cache_is_keyed_by_pooling(tmp_path, monkeypatch):
    """Cached encoder features are reused for the same encoders + media, and NOT after the token pooling changes
    (a stale cache would silently feed old-shaped features)."""
    import torch

    import data.load

    class FakeEncoders:
        name = "fake|fake"
        calls = 0

        def __call__(self, modality, medias):
            FakeEncoders.calls += 1
            return [torch.zeros(data.load.IMAGE_TOKENS, 2) for _ in medias]

    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"png")

    def tasks():
        s = [data.load.Sample(f"x{i}", "image", "describe the image.", "a", media=str(tmp_path / f"{i}.png"))
             for i in range(3)]
        return [data.load.Task("image-cap", s[:2], s[2:])]

    data.load.encode_samples(FakeEncoders(), tasks(), cache_dir=str(tmp_path))
    data.load.encode_samples(FakeEncoders(), tasks(), cache_dir=str(tmp_path))
    assert FakeEncoders.calls == 1, "same encoders and media: features must come from the cache"
    n = data.load.IMAGE_TOKENS // 4
    monkeypatch.setattr(data.load, "IMAGE_TOKENS", n)
    t = tasks()
    data.load.encode_samples(FakeEncoders(), t, cache_dir=str(tmp_path))
    assert FakeEncoders.calls == 2 and t[0].train[0].feat.shape == (n, 2)
    (tmp_path / "1.png").write_bytes(b"another png")           # the data redrawn in place: encoded again
    data.load.encode_samples(FakeEncoders(), tasks(), cache_dir=str(tmp_path))
    assert FakeEncoders.calls == 3


def test_encoder_weights_name_the_feature_cache(tmp_path):
    """A model folder rebuilt in place (a new data/tiny_base after a pull) gets another weights_id, so its
    features are never taken from the old encoder's cache; a hub id stays as it is."""
    import data.load
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights v1")
    first = data.load.weights_id(str(tmp_path))
    assert first.startswith(str(tmp_path) + "@") and data.load.weights_id(str(tmp_path)) == first
    (tmp_path / "model.safetensors").write_bytes(b"weights v2")
    assert data.load.weights_id(str(tmp_path)) != first
    assert data.load.weights_id("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"


def test_build_redraws_a_task_drawn_by_another_generator(tmp_path, monkeypatch):
    """DONE records the generator's GENERATOR_ID: a task drawn by another version of data/generate.py is redrawn."""
    monkeypatch.setattr(G, "TEXT_SIZES", {"train": 2, "test": 2})
    monkeypatch.setattr(G, "MIXED_SIZES", {"train": 3, "test": 2})
    G.build(str(tmp_path), ["image"], 0)
    assert (tmp_path / "image/DONE").read_text() == G.GENERATOR_ID
    (tmp_path / "image/marker").write_text("")
    G.build(str(tmp_path), ["image"], 0)
    assert (tmp_path / "image/marker").exists()                   # same generator: kept
    (tmp_path / "image/DONE").write_text("0123456789ab")
    G.build(str(tmp_path), ["image"], 0)
    assert not (tmp_path / "image/marker").exists() and (tmp_path / "image/DONE").read_text() == G.GENERATOR_ID


def test_build_redraws_a_task_cached_at_another_size(tmp_path, monkeypatch):
    """A cached task whose split sizes differ from split_sizes (mcl's test split grew from 64 to 512) is redrawn,
    and the larger draw starts with the smaller one (same rng stream)."""
    monkeypatch.setattr(G, "TEXT_SIZES", {"train": 2, "test": 2})
    monkeypatch.setattr(G, "MIXED_SIZES", {"train": 3, "test": 2})
    G.build(str(tmp_path), ["image"], 0)
    small = open(tmp_path / "image/test.jsonl").read().splitlines()
    monkeypatch.setattr(G, "MIXED_SIZES", {"train": 3, "test": 4})
    G.build(str(tmp_path), ["image"], 0)
    big = open(tmp_path / "image/test.jsonl").read().splitlines()
    assert len(small) == 2 and len(big) == 4 and big[:2] == small


def test_build_waits_for_a_build_in_progress(tmp_path, monkeypatch):
    """Two runs started at once on a fresh cache must not both draw (one would delete the other's half-written
    task): while another process holds root/.lock, build() waits, then finds the data complete or draws it."""
    import fcntl
    import threading
    monkeypatch.setattr(G, "TEXT_SIZES", {"train": 2, "test": 2})
    monkeypatch.setattr(G, "MIXED_SIZES", {"train": 3, "test": 2})
    holder = open(tmp_path / ".lock", "a")            # a separate open file: flock conflicts as with another process
    fcntl.flock(holder, fcntl.LOCK_EX)
    th = threading.Thread(target=G.build, args=(str(tmp_path), ["image"], 0))
    th.start()
    th.join(1.0)
    assert th.is_alive() and not (tmp_path / "image").exists()    # waiting, nothing drawn
    holder.close()                                                # the other process ends: its lock goes
    th.join(30)
    assert not th.is_alive() and (tmp_path / "image/DONE").read_text() == G.GENERATOR_ID
