"""common.py: method-neutral plumbing shared by every method file, identical for a fair comparison.

    MLLM = frozen modality encoder -> trainable per-modality projector -> cue + modality tokens -> LLM (+ LoRA)

Sections: CLI | LoRA | MLLM, batching, generation | training plumbing | metrics | results, checkpoints, resume.
Task manifests, media decoding, the frozen encoders and the LLM's loading are in data/load.py, scoring in
data/score.py, files and errors in data/files.py, where the embedded default's base lies in data/base.py (its
builder: data/tiny.py); the tables over finished runs: `python tools/summarize.py runs/`. Nothing here knows about
any particular CL method, and nothing under data/ imports this file.
"""
import argparse
import contextlib
import copy
import glob
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

# common.py stands on data/ (inputs, files, errors, scoring) and never the other way round: nothing under data/ that
# it imports imports it, and the tiny base's builder (data/tiny.py, a training program) and tools/ sit above it
from data.files import CACHE, ROOT, UserError, atomic_save, atomic_write, first_line   # noqa: F401  (re-exported)
from data.load import Encoders, check_model_dir, encode_samples, load_llava, load_llm, load_tasks
from data.score import SCALE, rule_of, score_predictions, score_samples, task_rule   # noqa: F401  (re-exported)
from data.base import aligned_projectors, tiny_base, variant_of
from data.predictions import qualitative

try:
    import fcntl                      # run-folder lock (POSIX); without it runs are not guarded against each other
except ImportError:                   # pragma: no cover
    fcntl = None

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")   # transformers 5 deprecation noise in peft


# ================================================================================================== CLI
ORDERS = {  # scenario -> order -> task sequence (SPEC 3)
    "micl": {1: ["audio-cap", "image-cap", "video-qa", "audio-qa", "image-qa", "video-cap"],
             2: ["image-cap", "video-cap", "video-qa", "image-qa", "audio-cap", "audio-qa"]},
    # MERA's modality-incremental setting: one step per modality, each mixing captioning and QA of that modality
    "mcl": {1: ["image", "video", "audio"], 2: ["image", "audio", "video"]},
    # MLLM-CL's domain continual learning: RS -> Med -> AD -> Sci -> Fin, one image-QA task per domain
    "dcl": {1: ["dcl-rs", "dcl-med", "dcl-ad", "dcl-sci", "dcl-fin"]},
    # MLLM-CL's ability continual learning: OCR -> math & logic -> visual perception -> GUI agent (its own tiny base)
    "acl": {1: ["acl-ocr", "acl-math", "acl-vp", "acl-gui"]},
}
# where each scenario's paper starts (docs/defaults.md): (--projectors, --projector-lr); others: scratch, --lr
START = {"acl": ("aligned", 1e-4), "mcl": ("aligned", None)}
EPOCHS = {"mcl": 2}     # --epochs per scenario, default 20: mcl's 3200 samples a modality twice = 320 x 20 steps


def shared_parser(method, doc):
    """The CLI every script shares; method files add their own flags to the returned parser."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("shared")
    g.add_argument("--scenario", default=None, help=f"one of {sorted(ORDERS)} (default micl)")
    g.add_argument("--order", type=int, default=1, help="task order within the scenario")
    g.add_argument("--tasks", default=None, help="any task sequence instead of --scenario/--order: comma-separated task "
                   "folders under --data-root (or synthetic task names), trained in this order, e.g. image-qa,image-cap")
    g.add_argument("--seed", type=int, default=0, help="seeds training and the synthetic train/test draw")
    g.add_argument("--output-dir", default=None, help=f"default runs/{method}__<scenario>__order<k>__seed<s>")
    g.add_argument("--data-root", default=None, help="folder of <task>/{train,test}.jsonl manifests; default: "
                   "the synthetic benchmark, generated into cache/data/seed<s>")
    g.add_argument("--llm", default="tiny", help="'tiny' (embedded default) or a Hugging Face causal-LM id/path")
    g.add_argument("--image-encoder", default="tiny", help="'tiny' or a HF vision model id/path (e.g. CLIP)")
    g.add_argument("--audio-encoder", default="tiny", help="'tiny' or a HF audio model id/path (AST, Whisper, CLAP)")
    g.add_argument("--mllm", default=None, help="a LLaVA checkpoint (transformers format) id/path, e.g. "
                   "llava-hf/llava-1.5-7b-hf, instead of --llm and --image-encoder: its LLM, vision tower (its feature "
                   "layer, all patch tokens), trained projector and chat template; video and audio as usual")
    g.add_argument("--chat-template", action="store_true", help="prompt through the LLM tokenizer's chat template "
                   "(user turn: cue, media, instruction; assistant turn: target), as instruct LLMs are tuned")
    # batch 16, lr 1e-3, 20 epochs: where finetune learns every micl task on every seed and order (--val; defaults.md)
    g.add_argument("--epochs", type=int, default=None, help="epochs per task (unset: 20; mcl: 2, common.EPOCHS)")
    g.add_argument("--max-steps", type=int, default=None, help="cap on optimiser steps per task (smoke tests)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate for LoRA and projectors")
    g.add_argument("--projectors", default=None, help="where the projectors start: scratch (random), aligned (the "
                   "embedded default's stage-1 projectors, data/tiny_base*/aligned.safetensors), or a file made by "
                   "python tools/align.py for these encoders and LLM; default: the scenario's paper's (START)")
    g.add_argument("--projector-lr", type=float, default=None, help="lr of the projectors (default --lr); MLLM-CL "
                   "trains them 10x slower than the LoRA")
    g.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="lr over each task's --epochs: constant, or cosine decay from --lr to 0")
    g.add_argument("--lora-r", type=int, default=16)
    g.add_argument("--lora-alpha", type=int, default=32)
    g.add_argument("--train-limit", type=int, default=None, help="use at most N training samples per task")
    g.add_argument("--test-limit", type=int, default=None, help="evaluate on at most N samples per task")
    g.add_argument("--test-split", default="test", help="manifest evaluated: <task>/<split>.jsonl (acl: test_iid)")
    g.add_argument("--eval-batch-size", type=int, default=64)
    g.add_argument("--val", nargs="?", const="iid", choices=["iid", "style", "phrasing"], help="evaluate on held-out "
                   "training samples, not test (<method>-val); acl: --val style|phrasing holds out a style / wording")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--resume", action="store_true", help="continue from the last finished task in --output-dir")
    p.set_defaults(method=method)
    return p


def parse_args(parser, argv=None, run_name=None):
    """Parse and validate shared flags. `run_name` names the output folder (default: the method)."""
    args = parser.parse_args(argv)
    if args.mllm is not None:           # --mllm is the LLM and the image encoder: given both ways, one of them is wrong
        given = parser.parse_args(argv, argparse.Namespace(llm=None, image_encoder=None))   # None: the flag not given
        if given.llm is not None or given.image_encoder is not None:
            raise UserError("--mllm brings its own LLM and image encoder; give --mllm or --llm / --image-encoder, "
                            "not both")
        args.llm = args.image_encoder = args.mllm
    if args.tasks is not None:          # a sequence of its own: named "custom", its order is the sequence itself
        if args.scenario is not None:
            raise UserError("--tasks and --scenario name two task sequences; give one of them")
        args.task_names = [t.strip() for t in args.tasks.split(",")]
        bad = [t for t in args.task_names if not t or t != os.path.basename(t) or t in (".", "..", "text")]
        if bad or len(set(args.task_names)) != len(args.task_names):
            raise UserError(f"--tasks {args.tasks!r}: expected distinct task folder names separated by commas "
                            f"(not 'text', the text-only set)")
        args.scenario, args.order = "custom", "+".join(args.task_names)
    else:
        args.scenario = args.scenario or "micl"
        if args.scenario not in ORDERS:
            raise UserError(f"--scenario {args.scenario!r} is unknown; expected one of {sorted(ORDERS)}")
        if args.order not in ORDERS[args.scenario]:
            raise UserError(f"--order {args.order} is out of range for --scenario {args.scenario}; "
                            f"expected one of {sorted(ORDERS[args.scenario])}")
        args.task_names = ORDERS[args.scenario][args.order]
    if args.projectors is None:         # the paper's start on the embedded default (real models: scratch)
        tiny = (args.llm, args.image_encoder, args.audio_encoder) == ("tiny",) * 3
        args.projectors, lr = START.get(args.scenario if tiny else None, ("scratch", None))
        args.projector_lr = lr if args.projector_lr is None else args.projector_lr
    args.epochs = EPOCHS.get(args.scenario, 20) if args.epochs is None else args.epochs
    for flag in ("epochs", "batch_size", "eval_batch_size", "lora_r"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    val = "" if not args.val else "-val" if args.val == "iid" else f"-val{args.val}"      # -val, -valstyle, ...
    args.run_name = (run_name or args.method) + val + f"-{args.test_split}" * (args.test_split != "test")
    if args.output_dir is None:
        seq = f"{args.scenario}__order{args.order}" if args.scenario != "custom" else f"custom__{args.order}"
        args.output_dir = os.path.join("runs", f"{args.run_name}__{seq}__seed{args.seed}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def task_seed(args, t, salt=0):
    """Seed of task t: a function of (seed, t) only, so a resumed run replays exactly what an uninterrupted one does."""
    return args.seed * 1000 + t * 10 + salt


# ================================================================================================== LoRA
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_config(args):
    from peft import LoraConfig
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      task_type="CAUSAL_LM")


def add_lora(model, args, name="default"):
    """Wrap the LLM with peft (first call) or add another adapter `name`; returns the peft model."""
    from peft import get_peft_model
    if not hasattr(model.llm, "peft_config"):
        model.llm = get_peft_model(model.llm, lora_config(args), adapter_name=name)
    else:
        model.llm.add_adapter(name, lora_config(args))
    return model.llm


def lora_layers(llm, adapter=None):
    """name -> peft LoRA layer, for every LoRA-targeted linear layer of the LLM (that holds `adapter`, if given)."""
    from peft.tuners.lora import LoraLayer
    return {n: m for n, m in llm.named_modules() if isinstance(m, LoraLayer) and (adapter is None or adapter in m.lora_A)}


# ================================================================================================== MLLM
class Projector(nn.Sequential):
    """Per-modality projector (SPEC 2): LayerNorm -> Linear -> GELU -> Linear, encoder dim -> LLM dim."""

    def __init__(self, d_in, d_out):
        super().__init__(nn.LayerNorm(d_in), nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))


CUES = {"image": " image:", "audio": " audio:", "video": " video:"}


@dataclass
class Batch:
    input_ids: torch.Tensor       # (B, L) left-padded; media positions hold a placeholder id
    attention_mask: torch.Tensor  # (B, L)
    position_ids: torch.Tensor    # (B, L)
    labels: torch.Tensor          # (B, L) target ids, -100 on prompt / padding
    media_mask: torch.Tensor      # (B, L) True where a projected modality token goes
    modalities: list
    feats: list                   # per sample: (K, D_enc) tensor or None

    def to(self, device):
        for k in ("input_ids", "attention_mask", "position_ids", "labels", "media_mask"):
            setattr(self, k, getattr(self, k).to(device))
        return self


class MLLM(nn.Module):
    """Frozen LLM (optionally peft-wrapped) + trainable per-modality projectors."""

    def __init__(self, llm, tokenizer, enc_dims, chat=False, projectors=None, prompt=None):
        """`projectors`: {modality: module} to use instead of a fresh Projector (--mllm: LLaVA's); `prompt`:
        (modality, instruction, target) -> (ids before the media, after it, target ids) instead of ours (--mllm)."""
        super().__init__()
        self.llm, self.tok, self.chat, self.prompt = llm, tokenizer, chat, prompt
        d = llm.config.get_text_config().hidden_size
        given = projectors or {}
        self.projectors = nn.ModuleDict({m: given[m] if m in given else Projector(k, d) for m, k in enc_dims.items()})
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.media_id = tokenizer.pad_token_id    # placeholder id; its embedding is overwritten
        # from_pretrained hands the LLM over in eval mode and generate() restores the mode it found: set train mode
        # here, or the LLM's mode (dropout, for models that have it) would depend on whether generate() ran before
        # training, and a resumed run (no zero-shot pass) would train differently from an uninterrupted one
        self.train()

    @property
    def device(self):
        return next(self.llm.parameters()).device

    # ---- tokenisation: [bos] cue <media x K> " {instruction} answer:" | " {target}" </s>
    def _ids(self, s):
        """(prompt ids before the media, prompt ids after it, target ids + </s>), cached on the sample. The cache is
        keyed by the text it was made from: a sample whose instruction or target changes later (e.g. a pseudo
        sample labelled after its teacher has read it) is tokenised again instead of training on stale ids."""
        key = (s.modality, s.instruction, s.target, self.chat)
        if s._ids is None or s._ids[0] != key:
            enc = lambda t: self.tok(t, add_special_tokens=False)["input_ids"]
            if self.prompt is not None:
                s._ids = (key, *self.prompt(s.modality, s.instruction, s.target))
            elif self.chat:
                s._ids = (key, *self._chat_ids(s, enc))
            else:
                head = self.bos + (enc(CUES[s.modality]) if s.modality in CUES else [])
                tail = enc((" " if s.modality in CUES else "") + s.instruction + " answer:")
                s._ids = (key, head, tail, enc(" " + s.target) + [self.tok.eos_token_id])
        return s._ids[1:]

    _MEDIA = "<<media>>"    # marker for the media tokens' place in the rendered template text

    def _chat_ids(self, s, enc):
        """--chat-template: user turn = cue, media, instruction; assistant turn = target (its template tokens, e.g.
        Qwen's <|im_end|>, are target tokens too, so the model learns to end its turn). The template is rendered as
        text once with and once without the assistant turn; the difference is the target."""
        cue = CUES[s.modality].strip() + self._MEDIA + " " if s.modality in CUES else ""
        user = [{"role": "user", "content": cue + s.instruction}]
        # date_string pins the date that some templates (Llama 3.x) write into their system prompt, so a prompt
        # is the same every day (a resumed run must see what the first process saw)
        render = lambda msgs, gen: self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen,
                                                                date_string="26 Jul 2024")
        prompt = render(user, True)
        full = render(user + [{"role": "assistant", "content": s.target}], False)
        if not full.startswith(prompt) or self.tok.eos_token not in full[len(prompt):]:
            raise UserError("--chat-template: the LLM's chat template does not render an assistant turn that extends "
                            "the generation prompt and ends with the eos token; use the plain prompt (no flag)")
        head, _, tail = prompt.partition(self._MEDIA)
        return enc(head), enc(tail), enc(full[len(prompt):])

    def collate(self, samples, with_target=True):
        rows, labs, masks = [], [], []
        for s in samples:
            head, tail, tgt = self._ids(s)
            k = 0 if s.feat is None else s.feat.shape[0]
            ids = head + [self.media_id] * k + tail + (tgt if with_target else [])
            rows.append(ids)
            labs.append([-100] * (len(ids) - len(tgt)) + tgt if with_target else [-100] * len(ids))
            masks.append([False] * len(head) + [True] * k + [False] * (len(ids) - len(head) - k))
        L = max(map(len, rows))
        pad = lambda r, v: [v] * (L - len(r)) + r          # left padding: generation appends on the right
        ids = torch.tensor([pad(r, self.tok.pad_token_id) for r in rows])
        att = torch.tensor([pad([1] * len(r), 0) for r in rows])
        return Batch(ids, att, (att.cumsum(1) - 1).clamp(min=0), torch.tensor([pad(l, -100) for l in labs]),
                     torch.tensor([pad(m, False) for m in masks]), [s.modality for s in samples], [s.feat for s in samples])

    def embed(self, b):
        """Token embeddings with the projected modality tokens written into the media positions."""
        emb = self.llm.get_input_embeddings()(b.input_ids)                      # (B, L, D)
        for m, proj in self.projectors.items():
            idx = [i for i, mm in enumerate(b.modalities) if mm == m]
            if not idx:
                continue
            x = torch.stack([b.feats[i] for i in idx]).to(emb.device)           # (n, K, D_enc)
            tokens = proj(x.to(proj[-1].weight.dtype)).to(emb.dtype)            # (n, K, D)
            sel = torch.zeros_like(b.media_mask)
            sel[idx] = b.media_mask[idx]
            emb = emb.masked_scatter(sel.unsqueeze(-1), tokens.reshape(-1, tokens.shape[-1]))
        return emb

    def forward(self, b, keep="targets"):
        """Next-token logits in float32 of the last K positions, (B, K, V): keep="all" K = L; keep="targets" from the
        first position that predicts a target (left padding puts all targets after it), so the LM head skips media and
        prompt positions no loss reads (a third of a 135M LLM's step). ce_loss / target_logits align the labels."""
        reads = (b.labels[:, 1:] != -100).any(0).nonzero()               # positions i whose next token is a target
        k = b.labels.shape[1] - int(reads[0]) if keep == "targets" and len(reads) else 0     # 0: all (transformers)
        with self.autocast():
            out = self.llm(inputs_embeds=self.embed(b), attention_mask=b.attention_mask, position_ids=b.position_ids,
                           logits_to_keep=k)
        return out.logits.float()

    def autocast(self):
        dev = self.device
        return torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)

    @torch.no_grad()
    def generate(self, samples, max_new_tokens=20, batch_size=64):
        """Greedy decoding with a KV cache; returns one string per sample."""
        was_training = self.training
        self.eval()
        eos, out = self.tok.eos_token_id, []
        emb_fn = self.llm.get_input_embeddings()
        for i in range(0, len(samples), batch_size):
            b = self.collate(samples[i:i + batch_size], with_target=False).to(self.device)
            att, pos = b.attention_mask, b.position_ids[:, -1:]
            with self.autocast():
                o = self.llm(inputs_embeds=self.embed(b), attention_mask=att, position_ids=b.position_ids, use_cache=True)
                nxt = o.logits[:, -1].argmax(-1)
                gen, done = [nxt], nxt == eos
                for _ in range(max_new_tokens - 1):
                    if bool(done.all()):
                        break
                    att = torch.cat([att, att.new_ones(att.shape[0], 1)], 1)
                    pos = pos + 1
                    o = self.llm(inputs_embeds=emb_fn(nxt[:, None]), attention_mask=att, position_ids=pos,
                                 past_key_values=o.past_key_values, use_cache=True)
                    nxt = o.logits[:, -1].argmax(-1)
                    gen.append(nxt)
                    done = done | (nxt == eos)
            for row in torch.stack(gen, 1).tolist():
                row = row[:row.index(eos)] if eos in row else row
                out.append(self.tok.decode(row, skip_special_tokens=True).strip())
        self.train(was_training)
        return out


def ce_loss(logits, labels, reduction="mean"):
    """Next-token cross-entropy on target tokens only (labels -100 elsewhere). reduction='none' -> per sample.
    `logits` (B, K, V) may cover the last K <= L positions only (MLLM.forward)."""
    lg, lb = logits[:, :-1], labels[:, labels.shape[1] - logits.shape[1]:][:, 1:]
    tok = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=-100, reduction="none").view(lb.shape)
    mask = (lb != -100).float()
    if reduction == "none":
        return (tok * mask).sum(1) / mask.sum(1).clamp(min=1)
    return (tok * mask).sum() / mask.sum().clamp(min=1)


def target_logits(logits, labels):
    """Logits that predict the target tokens: (N_target_tokens, V). Used by distillation losses."""
    lg, lb = logits[:, :-1], labels[:, labels.shape[1] - logits.shape[1]:][:, 1:]
    return lg[lb != -100]


def check_flags(args):
    """Flags that cannot work, each as one line before anything is loaded: numbers out of range, an --output-dir
    that is a file or a live run's folder, a model flag whose local path holds no model of its kind."""
    for k, v in sorted(vars(args).items()):
        flag = "--" + k.replace("_", "-")
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"{flag} must be a finite number, got {v}")
        if (k == "lr" or k.endswith("_lr")) and isinstance(v, (int, float)) and v <= 0:
            raise UserError(f"{flag} must be > 0, got {v}")
    for k in ("train_limit", "test_limit", "max_steps", "lora_alpha"):
        v = getattr(args, k, None)
        if v is not None and v < 1:
            raise UserError(f"--{k.replace('_', '-')} must be >= 1, got {v}")
    check_output_dir(args.output_dir)
    if args.projectors == "aligned" and any(v != "tiny" for v in (args.llm, args.image_encoder, args.audio_encoder)):
        raise UserError("--projectors aligned: only the embedded default ships aligned projectors; make them for these "
                        "models with python tools/align.py and pass --projectors PATH")
    if args.projectors not in ("scratch", "aligned") and not os.path.isfile(args.projectors):
        raise UserError(f"--projectors {args.projectors}: expected scratch, aligned or a file of tools/align.py")
    models = [("--llm", args.llm, "llm"), ("--image-encoder", args.image_encoder, "image")]
    if getattr(args, "mllm", None):     # --mllm stands for both
        models = [("--mllm", args.mllm, "llava")]
    for flag, path, kind in models + [("--audio-encoder", args.audio_encoder, "audio")]:
        if path != "tiny":
            check_model_dir(path, flag, kind)


def build_model(args):
    """Tasks (with frozen-encoder features attached), text-only set, and the MLLM on args.device."""
    check_flags(args)
    seed_everything(args.seed)            # projector (and later LoRA) initialisation depends on --seed only
    tasks, text = load_tasks(args)
    tiny = tiny_base(variant=variant_of(args.task_names)) if "tiny" in (args.llm, args.image_encoder, args.audio_encoder) else {}
    pick = lambda v, k: tiny[k] if v == "tiny" else v
    llava = load_llava(args.mllm, args.device) if getattr(args, "mllm", None) else None   # --mllm: its parts
    enc = Encoders(pick(args.image_encoder, "image"), pick(args.audio_encoder, "audio"), args.device, llava)
    encode_samples(enc, tasks, cache_dir=os.path.join(CACHE, "features"))
    llm, tok = (llava.llm, llava.tok) if llava else load_llm(pick(args.llm, "llm"), args.device)
    if args.chat_template and not llava and not getattr(tok, "chat_template", None):
        raise UserError(f"--chat-template: the tokenizer of --llm {args.llm} has no chat template")
    seed_everything(args.seed)
    # --mllm: LLaVA's trained projector for images (a copy for video frames, which go through its tower), its prompt
    given = {"image": llava.projector, "video": copy.deepcopy(llava.projector)} if llava else {}
    model = MLLM(llm, tok, enc.dims, chat=args.chat_template, projectors=given,
                 prompt=llava and llava.prompt).to(args.device)
    # the embedded default is named by its build (tiny-<key>), so --resume refuses a run made on another tiny base
    name = lambda v, k: tiny["name"] if v == "tiny" else v
    args.fingerprint = {"llm": name(args.llm, "llm"), "image_encoder": name(args.image_encoder, "image"),
                        "audio_encoder": name(args.audio_encoder, "audio"),
                        "llm_hidden": llm.config.get_text_config().hidden_size, "vocab": len(tok), "enc_dims": enc.dims,
                        "lora_r": args.lora_r, "lora_alpha": args.lora_alpha}
    if args.chat_template:     # only when set, so runs without it keep their fingerprint
        args.fingerprint["chat_template"] = True
    if args.projectors != "scratch":
        load_projectors(model, args)
        args.fingerprint["projectors"] = args.projectors
    del enc
    return model, tasks, text


def projector_record(args):
    """What a projector set was aligned for: the LLM and encoders (by name; embedded default: tiny-<key>), widths."""
    return {k: args.fingerprint[k] for k in ("llm", "image_encoder", "audio_encoder", "llm_hidden", "enc_dims")}


def load_projectors(model, args):
    """--projectors aligned | PATH: stage-1 projectors (tools/align.py), refused in one line when they were aligned
    for other encoders or another LLM."""
    from safetensors import safe_open
    path = aligned_projectors(variant=variant_of(args.task_names)) if args.projectors == "aligned" else args.projectors
    try:
        with safe_open(path, "pt") as f:
            record, state = json.loads(f.metadata()["record"]), {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:     # missing, not safetensors, no record
        raise UserError(f"--projectors {args.projectors}: not a projector file of tools/align.py ({first_line(e)})")
    diff = {k: (record.get(k), v) for k, v in projector_record(args).items() if _jsonable(record.get(k)) != _jsonable(v)}
    if diff:
        raise UserError(f"--projectors {args.projectors}: aligned for other models (file vs this run: {diff})")
    try:
        for m, proj in model.projectors.items():
            proj.load_state_dict({k[len(m) + 1:]: v for k, v in state.items() if k.startswith(m + ".")})
    except RuntimeError as e:
        raise UserError(f"--projectors {args.projectors}: does not fit these projectors ({first_line(e)})")


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model, args, params=None, lr=None, projector_lr=None):
    """AdamW over `params` (default: everything trainable); projectors at `projector_lr` or --projector-lr if set."""
    params = params if params is not None else trainable(model)
    projector_lr = projector_lr or getattr(args, "projector_lr", None)
    if projector_lr is None:
        return torch.optim.AdamW(params, lr=lr or args.lr, weight_decay=0.0)
    proj = {id(p) for p in model.projectors.parameters()}
    return torch.optim.AdamW([{"params": [p for p in params if id(p) not in proj], "lr": lr or args.lr},
                              {"params": [p for p in params if id(p) in proj], "lr": projector_lr}], weight_decay=0.0)


_progress = {"desc": None, "step": 0}       # the latest batches() stream and its step (1-based), for check_finite


def _diverged(what, flag="--lr"):
    return UserError(f"{what}; nothing of this task is saved; try a lower {flag} (--resume keeps the tasks finished "
                     f"before)")


def check_finite(loss, where=None, flag="--lr"):
    """Stop the run on a NaN / inf training loss: one line naming the task (`where`, default the desc of the
    running batches() stream), the step and the loss. Call once per step, before backward; nothing of the task is
    saved, so --resume continues after the last finished task. One sync, no RNG, no change to the loss."""
    if not bool(torch.isfinite(torch.as_tensor(loss)).all()):
        raise _diverged(f"{where or _progress['desc'] or 'training'}: diverged at step {_progress['step']} (loss "
                        f"{float(torch.as_tensor(loss).detach().float().sum())})", flag)


def batches(samples, args, t, desc=None, epochs=None, opt=None):
    """Shuffled mini-batches (lists of Samples) for task t, with a tqdm bar; respects --max-steps. With `opt` (the
    task's optimiser), its lr follows --lr-schedule over these steps k = 0..K-1: constant, or cosine
        lr_k = lr_0 (1 + cos(pi k / K)) / 2          (lr_0: the lr the optimiser was made with)"""
    rng = np.random.default_rng(task_seed(args, t, 1))
    epochs = args.epochs if epochs is None else epochs
    per_epoch = math.ceil(len(samples) / args.batch_size)
    total = per_epoch * epochs if args.max_steps is None else min(per_epoch * epochs, args.max_steps)
    cosine = opt is not None and args.lr_schedule == "cosine"
    bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
    step = 0
    for _ in range(epochs):
        perm = rng.permutation(len(samples))
        for i in range(0, len(samples), args.batch_size):
            if step >= total:
                bar.close()
                return
            if cosine:
                for g in opt.param_groups:
                    g["lr"] = g.setdefault("lr_0", g["lr"]) * (1 + math.cos(math.pi * step / total)) / 2
            _progress.update(desc=desc, step=step + 1)
            yield [samples[j] for j in perm[i:i + args.batch_size]]
            step += 1
            bar.update()
    bar.close()


# ================================================================================================== metrics
# How a prediction is scored (each task's rule, VQA answer processing, coco-caption tokens, CIDEr-D): data/score.py
def evaluate(predict, task):
    """Score of `predict` (list[Sample] -> list[str]) on a task's test split, and what it answered: one line per
    sample (task, id, pred, score). The score is the mean of those per-sample scores, so the lines that
    Run saves are exactly the predictions behind R."""
    preds = predict(task.test)
    scores = score_samples(task.test, preds)
    lines = [{"task": task.name, "id": s.id, "pred": p, "score": x} for s, p, x in zip(task.test, preds, scores)]
    return float(sum(scores) / len(scores)), lines


def brg_steps(R):
    """BRG after every step i = 2..T (1-based): BRG_i = 100 * mean_{j<i} R[i,j] / R[j,j] (R[j,j] = 0 counts 0)."""
    R = np.asarray(R, dtype=float)
    return [float(100 * np.mean([R[i, j] / R[j, j] if R[j, j] > 0 else 0.0 for j in range(i)])) for i in range(1, len(R))]


def cl_metrics(R):
    """SPEC 4 metrics of an accuracy matrix R (T x T, R[i][j] = score on task j after training task i):
        Last = mean_j R[T,j]            MAA = mean_i mean_{j<=i} R[i,j]          MFT = mean_j R[j,j]
        BWT  = mean_{j<T} (R[T,j] - R[j,j])       Forgetting = mean_{j<T} (max_{i<T} R[i,j] - R[T,j])
        BRG  = 100 * mean_{j<T} R[T,j] / R[j,j]   (= BRG_T of brg_steps)
        BRG_mean = mean_{i=2..T} BRG_i            (BRG averaged over the steps, brg_steps)
    """
    R = np.asarray(R, dtype=float)
    T = R.shape[0]
    if R.shape[0] != R.shape[1]:       # e.g. joint training: one step over all tasks -> only the final average
        return {"last": float(R[-1].mean())}
    m = {"last": R[-1].mean(), "maa": np.mean([R[i, :i + 1].mean() for i in range(T)]), "mft": np.diag(R).mean()}
    if T > 1:
        m["bwt"] = np.mean([R[-1, j] - R[j, j] for j in range(T - 1)])
        m["forgetting"] = np.mean([R[:-1, j].max() - R[-1, j] for j in range(T - 1)])
        m["brg"] = brg_steps(R)[-1]
        m["brg_mean"] = np.mean(brg_steps(R))
    else:
        m.update(bwt=0.0, forgetting=0.0, brg=100.0, brg_mean=100.0)
    return {k: float(v) for k, v in m.items()}


# ================================================================================================== results
def environment(args):
    import peft
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else
            f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
            "dtype": "bfloat16" if args.device.startswith("cuda") else "float32",
            "effective_batch_size": args.batch_size}


LOCK = ".lock"       # in every run folder, flock'ed by the live run: the OS drops the lock when the process dies
PREDICTIONS = "predictions"       # in every run folder: what the model answered in every evaluation (Run._write_predictions)


def reference_line(task, s):
    """What sample `s` of `task` asked and accepts, as predictions/references.jsonl stores it."""
    line = {"task": task, "id": s.id, "rule": rule_of(s), "instruction": s.instruction, "target": s.target}
    for k in ("answers", "references", "annotators"):     # left out where they say no more than the target
        if getattr(s, k) not in (None, [s.target]):
            line[k] = getattr(s, k)
    return line


def _lock_holder(run_dir):
    try:
        with open(os.path.join(run_dir, LOCK)) as f:
            return " ".join(f.read().split())[:200] or "another process"
    except OSError:
        return "another process"


def _in_use(run_dir):
    return UserError(f"--output-dir {run_dir} is in use by a live run ({_lock_holder(run_dir)}); wait for it to end "
                     f"or pick another --output-dir")


def check_output_dir(run_dir):       # a folder (or none yet) that no live run holds: else one line
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UserError(f"--output-dir {run_dir}: is a file, not a folder")
    probe_lock(run_dir)


def probe_lock(run_dir):
    """Refuse (one line) when a live process holds `run_dir`'s lock; takes nothing (a dead process's lock passes)."""
    path = os.path.join(run_dir, LOCK)
    if fcntl is None or not os.path.isfile(path):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:                              # a probe: the lock is released at once (flock locks belong to the open file)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(run_dir)
    finally:
        os.close(fd)


def nonfinite_weights(model, extra=None):
    """First tensor a checkpoint would save (LoRA, projectors, method state `extra`) holding NaN / inf, else None."""
    for k, v in model.state_dict().items():
        if ("lora_" in k or k.startswith("projectors.")) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return k

    def walk(o, name):
        if isinstance(o, torch.Tensor):
            return name if o.is_floating_point() and not bool(torch.isfinite(o).all()) else None
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, (list, tuple)) else ()
        for k, v in items:
            bad = walk(v, f"{name}.{k}")
            if bad:
                return bad
        return None
    return walk(extra, "method state")


class Run:
    """Owns the output folder: R matrix, zero-shot row, text-only accuracy, timings, per-task checkpoints, every
    evaluation's predictions, resume.

    Typical use in a method file:
        run = Run(args, tasks, text)
        run.zero_shot(model.generate)                    # untrained base, before task 1
        for t in range(run.start, len(tasks)): ...train...; run.end_task(t, model, predict, extra)
        run.finish()

    The folder is safe at every moment: it is locked while the Run lives (a second process on it is refused; a
    dead process's lock is taken over), it holds state.json from the start, checkpoint + state writes finish before
    a signal is acted on, and Ctrl-C / SIGTERM end the process with one line saying where --resume continues
    (exit status 130 / 143). A task whose weights are not finite is not saved.
    """

    def __init__(self, args, tasks, text, steps=None):
        """`steps`: names of the training steps (rows of R); default one per task. Joint training has one step."""
        self.args, self.tasks, self.text = args, tasks, text
        self.steps = steps or [t.name for t in tasks]
        self.dir = args.output_dir
        T = len(tasks)
        self.state = {"R": [[None] * T for _ in self.steps], "zero_shot": None, "text": [], "text_zero_shot": None,
                      "timings": {"train_s": [], "eval_s": []}, "extras": {}, "done": 0}
        self.t0 = time.time()
        self._lock_fd, self._signals, self._critical, self._pending = None, {}, 0, None
        self._zero_shot_lines = None      # the zero-shot predictions until task 1's checkpoint saves them
        check_output_dir(self.dir)        # first: a live run's folder is never called "not a run", never touched
        has_run = os.path.exists(self._state_path)
        if os.path.isdir(self.dir) and set(os.listdir(self.dir)) - {LOCK} and not has_run:
            raise UserError(f"--output-dir {self.dir}: exists, is not empty and holds no run; pick another folder")
        self._take_lock()
        try:
            self._remove_temp()           # half-written files of a killed run
            saved = self._read_state() if args.resume and has_run else None
            if saved is not None and saved["state"]["done"] > 0:
                now = dict(_jsonable(args.fingerprint), tasks=[t.name for t in tasks])
                diff = {k: (v, now.get(k)) for k, v in dict(saved["fingerprint"], tasks=saved["tasks"]).items() if now.get(k) != v}
                if diff:
                    raise UserError(f"--resume: {self.dir} was made with a different model or task sequence "
                                    f"(saved vs now: {diff})")
                self.state = saved["state"]
                for path in glob.glob(os.path.join(self.dir, PREDICTIONS, "step*_*.jsonl")):
                    if int(os.path.basename(path)[4:].split("_")[0]) > self.state["done"]:   # a step killed before
                        os.remove(path)                                                     # its state write
            else:
                if has_run:
                    self._clear()         # a fresh run never mixes with an old run's files
                self._write_state()       # the folder holds a run from now on
        except BaseException:
            self.close()
            raise
        self.start = self.state["done"]
        self._task_t0 = time.time()
        self._install_signals()

    @property
    def _state_path(self):
        return os.path.join(self.dir, "state.json")

    def ckpt_dir(self, t):
        return os.path.join(self.dir, "checkpoints", f"task{t}_{self.steps[t]}")

    def evaluate_all(self, predict, text_predict=None):
        """(score of every task, text-only accuracy or None without a text-only set, the prediction lines behind
        them)."""
        row, lines = [], []
        for task in self.tasks:
            score, task_lines = evaluate(predict, task)
            row.append(score)
            lines += task_lines
        text = None
        if self.text is not None:
            text, text_lines = evaluate(text_predict or predict, self.text)
            lines += text_lines
        return row, text, lines

    def zero_shot(self, predict):
        if self.state["zero_shot"] is None:   # its predictions are saved with task 1's checkpoint, as the row is
            self.state["zero_shot"], self.state["text_zero_shot"], self._zero_shot_lines = self.evaluate_all(predict)
            print(f"zero-shot: {fmt_row(self.state['zero_shot'])}{fmt_text(self.state['text_zero_shot'])}", flush=True)
        self._task_t0 = time.time()

    def end_task(self, t, model, predict, extra=None, text_predict=None):
        """Evaluate all tasks after task t, checkpoint the model (+ method state `extra`), write results."""
        train_s = time.time() - self._task_t0
        bad = nonfinite_weights(model, extra)
        if bad:
            raise _diverged(f"task {t + 1}/{len(self.steps)} {self.steps[t]}: training diverged (non-finite values "
                            f"in {bad})")
        e0 = time.time()
        row, txt, lines = self.evaluate_all(predict, text_predict)
        eval_s = time.time() - e0
        with self._uninterrupted():       # checkpoint + predictions + state: all or nothing, whatever signal comes
            save_checkpoint(self.ckpt_dir(t), model, extra)
            self._write_predictions(t, lines)
            self.state["R"][t] = row
            self.state["text"].append(txt)
            self.state["timings"]["train_s"].append(train_s)
            self.state["timings"]["eval_s"].append(eval_s)
            self.state["done"] = t + 1
            self._write_state()
            if t > 0:   # the previous task's checkpoint is no longer needed for resume; keep only the model artefacts
                prev = os.path.join(self.ckpt_dir(t - 1), "resume.pt")
                if os.path.exists(prev):
                    os.remove(prev)
        print(f"after step {t + 1}/{len(self.steps)} {self.steps[t]:>10}: {fmt_row(row)}{fmt_text(txt)} "
              f"| train {train_s:.0f}s eval {eval_s:.0f}s", flush=True)
        self._task_t0 = time.time()

    def _write_predictions(self, t, lines):
        """predictions/step<i>_<step>.jsonl: what the model answered after step i (step0_zero-shot: before task 1),
        one JSON line per task and test sample: task, id, pred, score (0-100; a task's R entry is their mean).
        references.jsonl, once per run: what each sample asked and accepts (task, id, rule, instruction, target, and
        answers / references / annotators where they are more than the target), so data.score can re-score them."""
        d = os.path.join(self.dir, PREDICTIONS)
        os.makedirs(d, exist_ok=True)
        files = {f"step{t + 1}_{self.steps[t]}.jsonl": lines}
        if self._zero_shot_lines is not None:
            files["step0_zero-shot.jsonl"] = self._zero_shot_lines
        if not os.path.exists(os.path.join(d, "references.jsonl")):
            files["references.jsonl"] = [reference_line(task.name, s) for task in self.tasks + [self.text] * (
                self.text is not None) for s in task.test]
        for name, rows in files.items():
            atomic_write(os.path.join(d, name), "".join(json.dumps(r) + "\n" for r in rows))
        self._zero_shot_lines = None

    def resume(self, model):
        """Load the last finished task's checkpoint into `model`; returns the method's `extra` state (or None)."""
        if self.start == 0:
            return None
        print(f"resuming {self.dir} after step {self.start}/{len(self.steps)}", flush=True)
        return load_checkpoint(self.ckpt_dir(self.start - 1), model)

    def finish(self, **extras):
        """Write results.json, results.md and matrix.png. `extras` are method-specific metrics."""
        s = self.state
        R = s["R"]
        metrics = cl_metrics(R)
        if self.text is not None:
            metrics["text_retention"] = s["text"][-1]
            metrics["text_base"] = s["text_zero_shot"]
        metrics.update(extras)
        s["timings"]["total_s"] = sum(s["timings"]["train_s"]) + sum(s["timings"]["eval_s"])
        s["timings"]["wall_s_this_process"] = time.time() - self.t0
        if str(self.args.device).startswith("cuda"):   # peak GPU memory of this process (since its start / resume)
            s["timings"]["peak_gpu_gib"] = torch.cuda.max_memory_allocated(self.args.device) / 2**30
        res = {"method": self.args.run_name, "args": {k: v for k, v in vars(self.args).items() if k != "fingerprint"},
               "tasks": [t.name for t in self.tasks], "steps": self.steps, "R": R, "zero_shot": s["zero_shot"], "text": s["text"],
               "metrics": metrics, "brg_steps": brg_steps(R) if len(R) == len(R[0]) else None,
               "scoring": {t.name: task_rule(t.test) for t in self.tasks + [self.text] * (self.text is not None)},
               "timings": s["timings"], "environment": environment(self.args), "fingerprint": self.args.fingerprint}
        with self._uninterrupted():       # results.json last: it is what marks a run finished
            atomic_write(os.path.join(self.dir, "results.md"), results_markdown(res) + qualitative(self.dir, self.args.seed))
            draw_matrix(R, res["steps"], res["tasks"], os.path.join(self.dir, "matrix.png"), title=f"{res['method']} {self.args.scenario} "
                        f"order {self.args.order} seed {self.args.seed}")
            atomic_write(os.path.join(self.dir, "results.json"), json.dumps(_jsonable(res), indent=1))
        print(results_markdown(res))
        print(f"wrote {self.dir}/results.json, results.md, matrix.png, predictions/")
        self.close()
        return res

    def close(self):
        """Release the folder's lock and the signal handlers (finish() does; for a Run that ends otherwise)."""
        self._restore_signals()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- the folder: lock, state file, leftovers
    def _take_lock(self):
        try:
            os.makedirs(self.dir, exist_ok=True)
            fd = os.open(os.path.join(self.dir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"--output-dir {self.dir}: cannot be created or written ({first_line(e)})")
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:   # a live run took it since probe_lock
                os.close(fd)
                raise _in_use(self.dir)
        os.ftruncate(fd, 0)              # who holds it, for the message of a refused second process
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join([os.path.basename(sys.executable)] + sys.argv)}\n".encode(), 0)
        self._lock_fd = fd

    def _read_state(self):
        try:
            with open(self._state_path) as f:
                saved = json.load(f)
            saved["fingerprint"], saved["tasks"], saved["state"]["done"]
            return saved
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"--resume: {self._state_path} is not a readable run state ({first_line(e)}); start the "
                            f"run again without --resume")

    def _write_state(self):
        atomic_write(self._state_path, json.dumps({"fingerprint": _jsonable(getattr(self.args, "fingerprint", {})),
                                                   "tasks": [x.name for x in self.tasks], "state": self.state}))

    def _clear(self):
        for name in os.listdir(self.dir):
            if name != LOCK:
                p = os.path.join(self.dir, name)
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)

    def _remove_temp(self):
        """Temp files and folders (atomic writes, save_checkpoint's task<i>.tmp/) that a killed process left."""
        for root, dirs, files in os.walk(self.dir):
            for d in [d for d in dirs if d.endswith(".tmp")]:
                shutil.rmtree(os.path.join(root, d), ignore_errors=True)
                dirs.remove(d)
            for f in files:
                if f.endswith((".tmp", ".tmp.png")):
                    os.remove(os.path.join(root, f))

    # ---- signals: SIGINT / SIGTERM end the run between consistent states
    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            old = signal.getsignal(sig)
            if old is signal.SIG_IGN or old is None:   # e.g. SIGINT of a background job: keep ignoring it
                continue
            self._signals[sig] = old
            signal.signal(sig, self._on_signal)

    def _restore_signals(self):
        for sig, old in self._signals.items():
            signal.signal(sig, old)
        self._signals = {}

    def _on_signal(self, signum, frame):
        if self._critical:
            self._pending = signum        # acted on when the checkpoint / state write is complete
        else:
            self._interrupted(signum)

    @contextlib.contextmanager
    def _uninterrupted(self):
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self._pending is not None:
            self._interrupted(self._pending)

    def _interrupted(self, signum):
        self._restore_signals()           # a second Ctrl-C while unwinding acts as usual
        self._remove_temp()
        for bar in list(getattr(tqdm, "_instances", ())):   # the line below on a line of its own
            bar.close()
        done, T = self.state["done"], len(self.steps)
        if done >= T:
            msg = (f"interrupted after the run finished ({self.dir}/results.json is complete)"
                   if os.path.exists(os.path.join(self.dir, "results.json")) else
                   "interrupted while writing the results; --resume writes them")
        else:
            msg = (f"interrupted in task {done + 1} ({self.steps[done]}); --resume " +
                   ("starts from the beginning" if done == 0 else f"continues after task {done}"))
        print(msg, file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)    # 130 (SIGINT) / 143 (SIGTERM); unwinds, so `with` blocks close


def fmt_row(row):
    return " ".join(f"{x:5.1f}" for x in row)


def fmt_text(score):
    return "" if score is None else f" | text {score:.1f}"


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return o


def results_markdown(res):
    names = res["tasks"]
    lines = ["| after \\ on | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    if res.get("zero_shot"):
        lines.append("| zero-shot | " + " | ".join(f"{x:.1f}" for x in res["zero_shot"]) + " |")
    for i, row in enumerate(res["R"]):
        lines.append(f"| {i + 1}. {res['steps'][i]} | " + " | ".join(f"{x:.1f}" for x in row) + " |")
    m = res["metrics"]
    lines += ["", "| metric | value |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in m.items() if isinstance(v, (int, float))]
    if res.get("brg_steps"):
        lines.append("| brg after steps 2..T | " + " / ".join(f"{x:.1f}" for x in res["brg_steps"]) + " |")
    if res.get("scoring"):              # every table names its scale
        lines += ["", "Scores 0-100 per task; " + "; ".join(f"{t}: {' + '.join(SCALE[r] for r in rule.split('+'))}"
                                                         for t, rule in res["scoring"].items()) + "."]
    return f"### {res['method']} ({res['args']['scenario']}, order {res['args']['order']}, seed {res['args']['seed']})\n\n" + "\n".join(lines) + "\n"


def draw_matrix(R, steps, names, path, title=""):
    """Heatmap of R (rows: after step i, columns: task j) with pillow; value in each cell."""
    from PIL import Image, ImageDraw, ImageFont
    S, T, cell, left, top = len(steps), len(names), 64, 110, 40
    img = Image.new("RGB", (max(left + cell * T + 10, 420), top + cell * S + 80), "white")
    d, font = ImageDraw.Draw(img), ImageFont.load_default()
    d.text((10, 10), title, fill="black", font=font)
    for j in range(T):
        d.text((left + j * cell + 4, top + cell * S + 6 + 12 * (j % 2)), names[j][:10], fill="black", font=font)
    for i in range(S):
        d.text((10, top + i * cell + cell // 2 - 5), f"after {steps[i]}"[:17], fill="black", font=font)
        for j in range(T):
            v = R[i][j]
            if v is None:
                continue
            a = max(0.0, min(1.0, v / 100))
            colour = (int(255 - 200 * a), int(255 - 120 * a), int(255 - 30 * a))     # white -> blue
            box = [left + j * cell, top + i * cell, left + (j + 1) * cell - 2, top + (i + 1) * cell - 2]
            d.rectangle(box, fill=colour, outline="black" if i == j else None)
            d.text((box[0] + 18, box[1] + 24), f"{v:.0f}", fill="black" if a < 0.6 else "white", font=font)
    d.text((10, top + cell * S + 40), "R[i, j]: score on task j (column) after training task i (row)", fill="black", font=font)
    tmp = path + ".tmp.png"
    img.save(tmp)
    os.replace(tmp, path)


# ================================================================================================== checkpoints
def save_checkpoint(path, model, extra=None):
    """Per-task checkpoint, written to a temp folder then renamed: `lora/` (peft save_pretrained, every adapter),
    `projectors.safetensors`, and `resume.pt` (all non-base weights + method state `extra`, e.g. Fisher, replay buffer; kept for the latest task only)."""
    from safetensors.torch import save_file
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    if hasattr(model.llm, "peft_config"):
        model.llm.save_pretrained(os.path.join(tmp, "lora"))
    save_file({k: v.detach().float().cpu().contiguous() for k, v in model.projectors.state_dict().items()},
              os.path.join(tmp, "projectors.safetensors"))
    # exact resume state: every parameter that is not the frozen base (LoRA weights of every adapter, projectors)
    base_free = {k: v.detach().cpu() for k, v in model.state_dict().items() if "lora_" in k or k.startswith("projectors.")}
    torch.save({"params": base_free, "adapters": sorted(getattr(model.llm, "peft_config", {})), "extra": extra},
               os.path.join(tmp, "resume.pt"))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def load_checkpoint(path, model):
    """Restore what save_checkpoint wrote. Adapters missing from `model` must be re-created by the method first
    (we check, so a mismatch is an error, not silent garbage). Returns the saved `extra`."""
    ck = os.path.join(path, "resume.pt")
    try:
        blob = torch.load(ck, weights_only=False)
        blob["params"], blob["adapters"], blob["extra"]
    except Exception as e:    # missing, truncated (RuntimeError from the zip reader), not a checkpoint
        raise UserError(f"--resume: {ck} is not a readable checkpoint ({first_line(e)}); start the run again "
                        f"without --resume")
    missing = [a for a in blob["adapters"] if a not in getattr(model.llm, "peft_config", {})]
    if missing:
        raise UserError(f"{path}: checkpoint has adapters {missing} that the model does not")
    try:
        res = model.load_state_dict(blob["params"], strict=False)
    except RuntimeError as e:   # shape mismatch
        raise UserError(f"{path}: checkpoint does not match this model configuration ({str(e).splitlines()[-1].strip()})")
    if res.unexpected_keys or any("lora_" in k or k.startswith("projectors.") for k in res.missing_keys):
        raise UserError(f"{path}: checkpoint does not match this model configuration")
    return blob["extra"]
