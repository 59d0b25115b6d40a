"""Tiny copies of real datasets in their official release layout, with real media files (see data/convert.py).

Every `write_<dataset>(root)` writes 2-3 items per split under `root` (created if needed) and returns `root`;
all content is deterministic. Media: 48x48 JPEGs, 8-frame 48x48 MP4 (libx264) / AVI (mpeg4), 0.5 s stereo WAVs.
"""
import csv
import json
import os

import av
import numpy as np
import soundfile as sf
from PIL import Image

SIDE, FRAMES, SECONDS = 48, 8, 0.5


def _path(root, *parts):
    path = os.path.join(root, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def _json(root, name, obj):
    with open(_path(root, name), "w") as f:
        json.dump(obj, f)


def _csv(root, name, header, rows):
    with open(_path(root, name), "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def _colour(k):
    return (40 + 70 * (k % 3), 200 - 60 * (k % 4), 30 + 50 * (k % 5))


def image(path, k=0):
    Image.new("RGB", (SIDE, SIDE), _colour(k)).save(_path(path), "JPEG")


def video(path, k=0, codec="libx264"):
    """A square moving right over FRAMES frames; .mp4 with libx264, .avi with mpeg4."""
    with av.open(_path(path), "w") as c:
        s = c.add_stream(codec, rate=8)
        s.width = s.height = SIDE
        s.pix_fmt = "yuv420p"
        for t in range(FRAMES):
            fr = np.zeros((SIDE, SIDE, 3), np.uint8)
            fr[16:32, 4 * t:4 * t + 16] = _colour(k)
            for p in s.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def audio(path, k=0, sr=44100):
    t = np.arange(int(SECONDS * sr)) / sr
    tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * k) * t)
    sf.write(_path(path), np.stack([tone, 0.5 * tone], 1), sr, subtype="PCM_16")


def write_flickr30k(root):
    """Karpathy split: 2 train images (3 / 2 captions), 1 val, 2 test (2 captions each)."""
    images = [("1000092795.jpg", "train", ["Two young guys with shaggy hair look at their hands.",
                                           "Two young men hanging out in the yard.", "Two friends enjoy time outside."]),
              ("10002456.jpg", "train", ["Several men in hard hats are operating a pulley system.",
                                         "Workers look down from up above on a piece of equipment."]),
              ("1000268201.jpg", "val", ["A child in a pink dress is climbing stairs."]),
              ("1000344755.jpg", "test", ["Someone in a blue shirt and hat is standing on stairs.",
                                          "A man in a blue shirt is standing on a ladder."]),
              ("1000366164.jpg", "test", ["Two men, one in a gray shirt, are in a kitchen.",
                                          "Two men are cooking a meal."])]
    out, sid = [], 0
    for k, (fn, split, caps) in enumerate(images):
        sents = []
        for c in caps:
            sents.append({"tokens": c.lower().rstrip(".").split(), "raw": c, "imgid": k, "sentid": sid})
            sid += 1
        out.append({"sentids": [s["sentid"] for s in sents], "imgid": k, "sentences": sents, "split": split,
                    "filename": fn})
        image(os.path.join(root, "flickr30k-images", fn), k)
    _json(root, "dataset_flickr30k.json", {"images": out, "dataset": "flickr30k"})
    return root


# OK-VQA: (question_id, image_id, question, 10 annotator answers); q 2971475 shares image 9 with q 2971470
OKVQA = {"train": [(2971475, 9, "What sport can you use this for?", ["Two", "2", "2", "three", "three", "three",
                                                                       "two", "4", "4", "4"]),
                   (2971470, 9, "What is the food called?", ["blue", "red"] * 5),
                   (1584315, 25, "What is this animal's name?", ["giraffe"] * 10)],
         "val": [(5725, 42, "What is the man holding?", ["racket", "racket", "tennis racket", "tennis racket",
                                                          "racket", "racket", "bat", "bat", "racket", "racket"]),
                 (3545, 73, "Where is this?", ["the beach", "beach", "Beach!", "ocean", "ocean", "ocean", "shore",
                                               "shore", "sea", "sea"])]}


def write_okvqa(root):
    for split, items in OKVQA.items():
        qs, anns = [], []
        for qid, image_id, question, answers in items:
            qs.append({"image_id": image_id, "question": question, "question_id": qid})
            anns.append({"image_id": image_id, "question_type": "other", "answer_type": "other", "question_id": qid,
                         "confidence": 3, "answers": [{"answer_id": i + 1, "raw_answer": a, "answer_confidence": "yes",
                                                       "answer": a} for i, a in enumerate(answers)]})
            image(os.path.join(root, f"{split}2014", f"COCO_{split}2014_{image_id:012d}.jpg"), image_id)
        _json(root, f"OpenEnded_mscoco_{split}2014_questions.json", {"questions": qs, "task_type": "Open-Ended"})
        _json(root, f"mscoco_{split}2014_annotations.json", {"annotations": anns, "data_type": "mscoco"})
    return root


def write_msrvtt(root):
    """video0, video1 train; video2 validate; video3, video4 test; 2 captions per video (video3: 3)."""
    caps = {"video0": ["a cartoon shows a dog", "an animated dog runs"], "video1": ["a man is cooking", "someone cooks food"],
            "video2": ["a woman sings", "a singer performs"],
            "video3": ["people are dancing", "a group dances on stage", "dancers perform"],
            "video4": ["a car drives fast", "a race car on a track"]}
    for name, folder, vids in (("train_val_videodatainfo.json", "TrainValVideo", [("video0", "train"), ("video1", "train"),
                                                                               ("video2", "validate")]),
                               ("test_videodatainfo.json", "TestVideo", [("video3", "test"), ("video4", "test")])):
        videos, sents = [], []
        for vid, split in vids:
            k = int(vid[5:])
            videos.append({"category": k, "url": f"https://www.youtube.com/watch?v=x{k}", "video_id": vid,
                           "start time": 1.0, "end time": 11.0, "split": split, "id": k})
            sents += [{"caption": c, "video_id": vid, "sen_id": 10 * k + j} for j, c in enumerate(caps[vid])]
            video(os.path.join(root, folder, f"{vid}.mp4"), k)
        _json(root, name, {"info": {"year": "2016"}, "videos": videos, "sentences": sents})
    return root


MSVD_CLIPS = ["-4wsuPCjDBc_5_15", "-7KMZQEsJW4_205_208", "-8y1Q0rA3n8_108_115", "00jrXRMlZOY_0_10"]


def write_msvd_qa(root):
    with open(_path(root, "youtube_mapping.txt"), "w") as f:
        f.writelines(f"{c} vid{k + 1}\n" for k, c in enumerate(MSVD_CLIPS))
    _json(root, "train_qa.json", [{"answer": "cat", "id": 0, "question": "what is playing?", "video_id": 1},
                                  {"answer": "play", "id": 1, "question": "what is the cat doing?", "video_id": 1},
                                  {"answer": "man", "id": 2, "question": "who is slicing a tomato?", "video_id": 2}])
    _json(root, "val_qa.json", [{"answer": "dog", "id": 3, "question": "what is running?", "video_id": 3}])
    _json(root, "test_qa.json", [{"answer": "woman", "id": 4, "question": "who is riding a horse?", "video_id": 4},
                                 {"answer": "horse", "id": 5, "question": "what is a woman riding?", "video_id": 4}])
    for k, c in enumerate(MSVD_CLIPS):
        video(os.path.join(root, "YouTubeClips", f"{c}.avi"), k, codec="mpeg4")
    return root


AUDIOCAPS = {"train": [(91139, "r1nicOVtvkQ", 130, "A woman talks nearby as water pours"),
                       (58146, "UDGBjjwyaqE", 20, "Multiple clanging and clanking sounds"),
                       (11542, "0Z8TSw5fPno", 30, "A man speaks, followed by a dog barking")],
             "val": [(97151, "vfY_TJq7n_U", 130, "Rustling occurs, ducks quack and water splashes")],
             "test": [(103549, "--0w1YA1Hm4", 30, "A vehicle driving as a man and woman are talking"),
                      (103548, "--0w1YA1Hm4", 30, "A man and woman speak while a car moves"),
                      (104207, "-AheI8Epim4", 30, "A man is speaking, then a bird chirps"),
                      (104208, "-AheI8Epim4", 30, "Birds chirp as a man talks")]}


def write_audiocaps(root):
    """AudioCaps CSVs plus clips arranged as audio/<split>/<youtube_id>.wav (48 kHz stereo)."""
    for split, rows in AUDIOCAPS.items():
        _csv(root, f"{split}.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], rows)
        for k, yid in enumerate(dict.fromkeys(r[1] for r in rows)):
            audio(os.path.join(root, "audio", split, f"{yid}.wav"), k, sr=48000)
    return root


# Clotho-AQA: (file_name, question, 3 annotator answers, confidences); one question holds a comma
CLOTHO_AQA = {"train": [("Distorted AM Radio noise.wav", "is it raining?", ["no", "No", "yes"]),
                        ("Distorted AM Radio noise.wav", "what is making the noise, a radio?", ["radio", "a radio", "tv"]),
                        ("birds_in_forest.wav", "are there birds?", ["yes", "yes", "yes"])],
              "val": [("birds_in_forest.wav", "is a man speaking?", ["no", "no", "no"])],
              "test": [("Night_Crickets.wav", "how many dogs bark?", ["one", "two", "1"]),
                       ("Night_Crickets.wav", "is it night?", ["yes", "no", "maybe"])]}


def write_clotho_aqa(root):
    names = []
    for split, items in CLOTHO_AQA.items():
        rows = [(fn, q, a, ["yes", "no", "maybe"][j]) for fn, q, answers in items for j, a in enumerate(answers)]
        _csv(root, f"clotho_aqa_{split}.csv", ["file_name", "QuestionText", "answer", "confidence"], rows)
        names += [fn for fn, _, _ in items]
    for k, fn in enumerate(dict.fromkeys(names)):
        audio(os.path.join(root, "audio_files", fn), k, sr=44100)
    return root


def write_llava(root):
    """LLaVA train items (one two-turn conversation) and MLLM-CL-style test items (one with a conversation)."""
    _json(root, "train.json", [
        {"id": "rs_0", "image": "images/farm.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is the main land use?"}, {"from": "gpt", "value": "farmland"},
            {"from": "human", "value": "How many buildings are there?"}, {"from": "gpt", "value": "3"}]},
        {"id": "rs_1", "image": "images/lake.jpg", "conversations": [
            {"from": "human", "value": "Is there a lake?\n<image>"}, {"from": "gpt", "value": "yes"}]}])
    _json(root, "test.json", [
        {"question_id": 17, "image": "images/port.jpg", "text": "What is in the water?", "answer": "ships",
         "answer_type": "other"},
        {"question_id": 18, "image": "images/lake.jpg", "text": "<image>\nHow many lakes?", "answer": 2},
        {"id": "rs_9", "image": "images/farm.jpg", "conversations": [
            {"from": "human", "value": "<image>\nIs it urban?"}, {"from": "gpt", "value": "no"}]}])
    for k, name in enumerate(["farm", "lake", "port"]):
        image(os.path.join(root, "images", f"{name}.jpg"), k)
    return root


ALPACA = [{"instruction": "Give three tips for staying healthy.", "input": "",
           "output": "Eat a balanced diet, exercise regularly and sleep well."},
          {"instruction": "What is the capital of France?", "input": "", "output": "Paris"},
          {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
          {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
          {"instruction": "Name a primary colour.", "input": "", "output": "red"}]


def write_alpaca(root):
    _json(root, "alpaca_data.json", ALPACA)
    return root


WRITERS = {"flickr30k": write_flickr30k, "okvqa": write_okvqa, "msrvtt": write_msrvtt, "msvd-qa": write_msvd_qa,
           "audiocaps": write_audiocaps, "clotho-aqa": write_clotho_aqa, "llava": write_llava, "alpaca": write_alpaca}
