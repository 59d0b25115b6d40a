"""MoInCL: Pseudo Target Generation + Instruction-based Knowledge Distillation for modality-inconsistent CL.

Pian, Deng, Mo, Liu, Guo, Tian, "Modality-Inconsistent Continual Learning of Multimodal Large Language Models",
TMLR 2026, https://arxiv.org/abs/2412.13050; official code github.com/weiguoPian/MICL_TMLR (train.py).
How the defaults were checked, and results: docs/moincl.md.

One LoRA on the frozen LLM plus the per-modality projectors is trained over the task sequence (as finetune). At
task t > 0 the model after task t-1, frozen, is the teacher f_{t-1}; the student f_t is trained with two extra terms.
  PTGM (Pseudo Target Generation Module), against forgetting caused by a task-type shift (captioning <-> QA):
    for every task type y' learned in tasks 1..t-1 that differs from the current task type y_t, the teacher labels
    the CURRENT inputs x (current media) under type y''s instruction q once, at the start of task t:
        captioning: q = "describe the {modality}."          QA: q ~ question bank of the earlier QA tasks
        y_hat = f_{t-1}.generate(x, q)                        (greedy; the teacher is fixed during task t)
    each batch B gets P = --pseudo-per-batch pseudo samples (x, q, y_hat) from the media of B's last P samples
    (pseudo captions) or first P (pseudo QA), as official, distilled from the teacher on their targets:
        L_KD = T^2 KL( softmax(z_{t-1} / T) || softmax(z_t / T) )          over the pseudo samples' target tokens
  IKD (Instruction-based Knowledge Distillation), against forgetting of what the LLM can do without media:
    every step, --ikd-per-batch text-only instructions u (never a CL task) are run through teacher and student:
        L_IKD = T^2 KL( softmax(z_{t-1}(u) / T) || softmax(z_t(u) / T) )   over every (non-padding) position of u
  Total (T = 5):    L = L_CE(B U pseudo) + lambda L_KD + L_IKD
  LoRA fusion, after every epoch of task t > 0 (official):  theta = (1 - a) theta_{t-1} + a theta,  a = 0.8

Deviations from the paper / official code (and why):
  - Task type = captioning vs QA, not crossed with the modality, as the official code (`'cap' in learned_task_type`)
    does; a step that mixes both types (mcl) has no other type, so no PTGM.
  - Pseudo QA: official loads pre-generated per-clip QA files (no generator in the repo); here (SPEC 5) the teacher
    answers questions drawn from earlier QA tasks' training instructions (same modality if any, else all).
  - Greedy pseudo-target decoding (official: 5-beam with repetition penalty), like all our evaluation.
  - L_KD on the pseudo samples' target tokens only (SPEC 5); official: every position, prompt and padding included.
  - L_IKD: the text-only set's answer is appended and every non-padding position distilled (official: prompts
    only, padding included): answers are what text-only accuracy measures. 8 instructions per step of 16 samples
    (official 4 of 8, the same share), drawn without replacement within a step (official: with replacement).
  - One setting for all steps and orders (official scripts set lambda, pseudo count, fusion factor and even PTGM
    on/off per step), so no per-step tuning: lambda = 1, 8 pseudo samples per batch of 16 (official 1/8 to 1/2),
    the official type-only PTGM rule, fusion a = 0.8 (official 0.1-0.8 per step; chosen on the validation split,
    docs/moincl.md; --no-lora-fusion turns it off).
  - No early stopping / best-epoch checkpoint (official: patience 5 on the current task's val split): every method
    here trains a fixed number of epochs and is evaluated after the last one (one protocol for all).
  - Projectors stay trainable for every modality, as in finetune and official (--freeze_proj off); never fused.

Usage:
    python moincl.py --scenario micl --order 1 --seed 0
    python moincl.py --no-ikd                     # ablations: --no-ptgm, --no-ikd, --no-lora-fusion (moincl-noikd, ...)
    python moincl.py --pseudo-per-batch 16 --kd-weight 0.5 --lora-fusion 0.5
"""
import copy
import dataclasses
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from common import (Run, UserError, add_lora, batches, build_model, ce_loss, check_finite, make_optimizer,
                    parse_args, seed_everything, shared_parser, target_logits, task_seed)
from data.generate import caption_instruction

FUSION = 0.8                             # LoRA fusion factor a (validation split, docs/moincl.md)


def get_args(argv=None):
    p = shared_parser("moincl", __doc__)
    g = p.add_argument_group("moincl")
    g.add_argument("--no-ptgm", action="store_true", help="ablation: no pseudo targets (and no L_KD)")
    g.add_argument("--no-ikd", action="store_true", help="ablation: no instruction-based distillation")
    g.add_argument("--pseudo-per-batch", type=int, default=8, help="pseudo samples added to each batch (PTGM)")
    g.add_argument("--kd-weight", type=float, default=1.0, help="lambda, weight of L_KD on the pseudo samples")
    g.add_argument("--kd-temperature", type=float, default=5.0, help="T of both distillation terms")
    g.add_argument("--ikd-per-batch", type=int, default=8, help="text-only instructions per step (IKD)")
    g.add_argument("--ikd-weight", type=float, default=1.0, help="weight of L_IKD")
    g.add_argument("--lora-fusion", type=float, default=FUSION, metavar="A",
                   help="after every epoch of task t > 0: theta = (1 - A) theta_{t-1} + A theta on the LoRA weights")
    g.add_argument("--no-lora-fusion", action="store_true", help="ablation: no LoRA fusion")
    a = p.parse_args(argv)
    name = ("moincl" + ("-noptgm" if a.no_ptgm else "") + ("-noikd" if a.no_ikd else "") +
            ("-nofusion" if a.no_lora_fusion else f"-fusion{a.lora_fusion:g}" if a.lora_fusion != FUSION else ""))
    args = parse_args(p, argv, run_name=name)
    for flag in ("pseudo_per_batch", "ikd_per_batch", "kd_weight", "ikd_weight"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if args.kd_temperature <= 0:
        raise UserError(f"--kd-temperature must be > 0, got {args.kd_temperature}")
    if not 0 < args.lora_fusion <= 1:
        raise UserError(f"--lora-fusion must be in (0, 1] (0 would freeze the LoRA), got {args.lora_fusion}")
    if not args.no_ikd and args.data_root and not os.path.isdir(os.path.join(args.data_root, "text")):
        raise UserError(f"--data-root {args.data_root}: IKD needs a text-only instruction set in text/; add one "
                        f"(python -m data.convert alpaca --src alpaca_data.json --out {args.data_root}/text) "
                        f"or pass --no-ikd")
    return args


# ---------------------------------------------------------------------------------------------- distillation
def kd_loss(student, teacher, T):
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), mean over rows; inputs (N_positions, V)."""
    return T * T * F.kl_div(F.log_softmax(student / T, -1), F.log_softmax(teacher / T, -1), log_target=True,
                            reduction="batchmean")


def frozen_teacher(model):
    """f_{t-1}: a deep copy of the whole MLLM (LLM + LoRA + projectors), frozen and in eval mode."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def ptgm_kd(logits, b, teacher, pseudo, T):
    """L_KD on the pseudo samples, which are the last len(pseudo) rows of the joint batch b."""
    n = len(pseudo)
    with torch.no_grad():
        pb = teacher.collate(pseudo).to(b.labels.device)
        z_teacher = target_logits(teacher(pb), pb.labels)                   # (N_pseudo_target_tokens, V)
    z_student = target_logits(logits[-n:], b.labels[-n:])                   # same tokens, same order
    return kd_loss(z_student, z_teacher, T)


def ikd_loss(model, teacher, texts, T):
    """L_IKD: KL on every non-padding position of text-only instruction + answer sequences."""
    tb = model.collate(texts).to(model.device)
    keep = tb.attention_mask[:, :-1].bool()          # position i predicts token i+1; the last one predicts nothing
    z_student = model(tb, keep="all")[:, :-1][keep]                                     # (N_positions, V)
    with torch.no_grad():
        z_teacher = teacher(tb, keep="all")[:, :-1][keep]
    return kd_loss(z_student, z_teacher, T)


# ---------------------------------------------------------------------------------------------- PTGM
def task_types(task):
    return {"cap", "qa"} if task.kind == "mixed" else {task.kind}


def question_bank(tasks, t, modality):
    """Questions of the QA tasks before t: those asked about `modality` if any were learned, else all."""
    qa = [s for task in tasks[:t] for s in task.train if s.answers is not None]
    same = [s for s in qa if s.modality == modality]
    return sorted({s.instruction for s in (same or qa)})


def make_pseudo(teacher, tasks, t, args):
    """{task type y': {sample id: pseudo sample}}: each current training sample relabelled by the teacher once per
    task type learned before t that differs from task t's. Same media / features, the other type's instruction."""
    task = tasks[t]
    other = sorted(set().union(*[task_types(x) for x in tasks[:t]]) - task_types(task)) if t > 0 else []
    rng = np.random.default_rng(task_seed(args, t, 4))
    pool = {}
    for y in other:
        if y == "cap":
            made = [dataclasses.replace(s, instruction=caption_instruction(s.modality), answers=None, references=None)
                    for s in task.train]
        else:
            bank = question_bank(tasks, t, task.modality)
            made = [dataclasses.replace(s, instruction=bank[int(rng.integers(len(bank)))], answers=[""],
                                        references=None) for s in task.train]
        targets = teacher.generate(made, batch_size=args.eval_batch_size)  # y_hat = f_{t-1}(x, q), once per task
        # the teacher's output is the pseudo target (MLLM._ids re-tokenises a sample whose text changed)
        pool[y] = {s.id: dataclasses.replace(p, id=f"{s.id}/pseudo-{y}", target=y_hat,
                                             answers=None if p.answers is None else [y_hat])
                   for s, p, y_hat in zip(task.train, made, targets)}
    return pool


def pseudo_for(samples, pool, k):
    """Pseudo samples for a batch, from the media of its last k samples for pseudo captions and of its first k for
    pseudo QA (as the official code picks them). A task has one type, so at most one other type is in the pool."""
    if k == 0:
        return []
    return [made[s.id] for y, made in pool.items() for s in (samples[-k:] if y == "cap" else samples[:k])]


def lora_fusion(model, teacher, a):
    """theta = (1 - a) theta_{t-1} + a theta, on the LoRA weights (official per-epoch interpolation)."""
    old = dict(teacher.named_parameters())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and "lora_" in n:
                p.copy_((1 - a) * old[n] + a * p)


# ---------------------------------------------------------------------------------------------- training
def train_step(model, teacher, opt, samples, pool, texts, args):
    """One step of L = L_CE(B U pseudo) + lambda L_KD + L_IKD; returns the loss terms (floats)."""
    pseudo = pseudo_for(samples, pool, args.pseudo_per_batch)
    b = model.collate(samples + pseudo).to(args.device)
    logits = model(b)
    loss = ce_loss(logits, b.labels)                                        # L_CE(B U pseudo), token mean
    terms = {"ce": loss.item()}
    if pseudo and args.kd_weight > 0:
        l_kd = ptgm_kd(logits, b, teacher, pseudo, args.kd_temperature)
        loss = loss + args.kd_weight * l_kd                                 # + lambda L_KD
        terms["kd"] = l_kd.item()
    if texts:
        l_ikd = ikd_loss(model, teacher, texts, args.kd_temperature)
        loss = loss + args.ikd_weight * l_ikd                               # + L_IKD
        terms["ikd"] = l_ikd.item()
    check_finite(loss)                                                      # NaN / inf: stop, naming the task and step
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return terms


def main(argv=None):
    args = get_args(argv)
    model, tasks, text = build_model(args)
    add_lora(model, args)                    # one LoRA shared by all tasks, plus the shared projectors
    run = Run(args, tasks, text)
    run.resume(model)                        # the model after the last finished task (= the next teacher)
    run.zero_shot(model.generate)
    for t in range(run.start, len(tasks)):
        task = tasks[t]
        seed_everything(task_seed(args, t))
        teacher = frozen_teacher(model) if t > 0 else None                  # f_{t-1}
        pool = make_pseudo(teacher, tasks, t, args) if teacher is not None and not args.no_ptgm else {}
        n_ikd = min(args.ikd_per_batch, len(text.train)) if teacher is not None and not args.no_ikd else 0
        rng = np.random.default_rng(task_seed(args, t, 5))                 # draws the IKD instructions
        opt = make_optimizer(model, args)    # fresh optimiser state per task, as in finetune
        per_epoch = math.ceil(len(task.train) / args.batch_size)
        sums, steps = {}, 0
        desc = f"task {t + 1}/{len(tasks)} {task.name}"
        for step, samples in enumerate(batches(task.train, args, t, desc=desc, opt=opt)):
            texts = [text.train[i] for i in rng.choice(len(text.train), size=n_ikd, replace=False)] if n_ikd else []
            for key, v in train_step(model, teacher, opt, samples, pool, texts, args).items():
                sums[key] = sums.get(key, 0.0) + v
            steps += 1
            if not args.no_lora_fusion and teacher is not None and (step + 1) % per_epoch == 0:
                lora_fusion(model, teacher, args.lora_fusion)              # end of an epoch
        print(f"task {t + 1} {task.name}: pseudo {sorted(pool) or '-'} | mean " +
              " ".join(f"{key} {v / max(steps, 1):.3f}" for key, v in sums.items()), flush=True)
        del teacher
        run.end_task(t, model, model.generate)
    return run.finish()


if __name__ == "__main__":
    main()
