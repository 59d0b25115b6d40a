"""MR-LoRA: parameter isolation with one LoRA expert per task, and an MLLM router that picks the expert.

Zhao, Zhu, Guo, Wang, Wang, Meng, Zhang, "MLLM-CL: Continual Learning for Multimodal Large Language Models", 2025,
https://arxiv.org/abs/2506.05453; official code github.com/bjzhb666/MLLM-CL. How the router defaults were
chosen, and results: docs/mr_lora.md.

Training, task t of the task sequence (t = 1..T):
  1. expert    a fresh LoRA expert theta_t and a fresh projector set phi_t, both from the base MLLM (not from
               expert t-1), trained on task t only; earlier experts are frozen, so they never forget:
                   (theta_t, phi_t) = argmin  E_{(x, q, y) ~ D_t}  CE(y | x, q; base + theta_t, phi_t)       (Eq. 1)
  2. router    a LoRA rho (+ its own projector set psi) on the same base MLLM, trained incrementally (rho_t starts
               from rho_{t-1}) on a replay buffer M_t = union_{j<=t} M_j, M_j = --router-samples (20) training samples
               of task j kept when task j is learned. Each sample is rewritten as a multiple-choice prompt that lists
               the t experts seen so far by letter; the target is the letter of the sample's own task:
                   q_r = "choose the expert for this request : A <task 1> , B <task 2> . request : <q>",  y_r = L(j)
                   (rho_t, psi_t) = argmin  E_{(x, q_r, y_r) ~ M_t}  CE(y_r | x, q_r; base + rho, psi)        (Eq. 2)
Inference (two stages, the predict_fn every evaluation calls):
       k* = parse(generate(x, q_r; base + rho_t, psi_t))   (unparsable -> the most recent expert, counted)  (Eq. 3)
       y  = generate(x, q; base + theta_k*, phi_k*)                                                          (Eq. 4)
Only experts of seen tasks can be chosen at step t; unseen tasks are routed among them (a deployed system). The
reported `router_accuracy` is the share of test samples of seen tasks routed to their own task's expert after
the last task (per step in `router_accuracy_steps`; `router_confusion[i][k]`: test samples of task i routed to
expert k); `--oracle` routes by the ground-truth task (upper bound).

Deviations from the paper / official code (and why):
  - The official router is trained once, after all experts, on 20 samples per task (40 epochs, lr 5e-6, LoRA
    r128, from a merged model); here (SPEC 5) it is trained after every task on the replay buffer, from the
    previous router (the first from the base), so every step can be evaluated, with the shared LoRA rank and its
    own --router-lr 1e-3 / --router-epochs 40 (chosen on held-out training samples, docs/mr_lora.md).
  - Official expert descriptions are hand-written sentences with a fixed letter per domain; here letters follow
    the task sequence (A = task 1) and each expert is described by its task name ("image qa"), so the prompt
    works for any task sequence and the tiny LLM's vocabulary.
  - Official routing falls back to a *random* expert on an illegal output and accepts any output that contains
    a letter; here the first word must be exactly one of the seen experts' upper-case letters, anything else
    falls back deterministically to the most recent expert and is counted (`router_fallbacks`), so runs repeat.
  - Every expert and the router own a projector set (LLaVA LoRA training also trains its mm_projector, saved
    with each expert); all start from the same base projector initialisation.
  - Where it starts: MLLM-CL continues LLaVA-1.5, whose projector is aligned, and trains it at a tenth of the LoRA
    lr; acl does the same (the acl base's aligned projectors, --projector-lr 1e-4). dcl starts from scratch
    projectors: the tiny base's aligned ones, made from a few synthetic captions, lost accuracy there on validation
    (docs/defaults.md).
  - Text-only instructions (LLM ability retention) are routed like any request: there is no "no expert" option.
    With --oracle, samples without a seen ground-truth expert (unseen tasks, text) go to the most recent expert.

Usage:
    python mr_lora.py --scenario micl --order 1
    python mr_lora.py --scenario dcl                      # domain CL: the router must look at the image
    python mr_lora.py --scenario dcl --oracle             # ground-truth expert (run name mr-lora-oracle)
    python mr_lora.py --scenario acl                      # ability CL, shifted test; --test-split test_iid: IID
    python mr_lora.py --scenario dcl --mllm llava-hf/llava-1.5-7b-hf   # on MLLM-CL's own base model (a GPU)
"""
import copy
import string
from dataclasses import replace

import numpy as np
import torch

from common import (Run, UserError, add_lora, batches, build_model, ce_loss, check_finite, make_optimizer,
                    parse_args, seed_everything, shared_parser, task_seed)
from data.generate import EXPERT_LETTERS


def get_args(argv=None):
    p = shared_parser("mr-lora", __doc__)
    g = p.add_argument_group("MR-LoRA")
    g.add_argument("--router-samples", type=int, default=20, help="training samples per task kept for the router")
    g.add_argument("--router-epochs", type=int, default=40, help="router epochs over the replay buffer per task")
    g.add_argument("--router-lr", type=float, default=1e-3, help="router learning rate (experts use --lr)")
    g.add_argument("--router-projector-lr", type=float, default=None, help="lr of the router's projector set "
                   "(default: --projector-lr)")
    g.add_argument("--oracle", action="store_true", help="route by the ground-truth task (upper bound; run name "
                   "mr-lora-oracle)")
    a = p.parse_args(argv)
    args = parse_args(p, argv, run_name="mr-lora-oracle" if a.oracle else "mr-lora")
    bad_lr = args.router_lr <= 0 or (args.router_projector_lr is not None and args.router_projector_lr <= 0)
    if args.router_samples < 1 or args.router_epochs < 1 or bad_lr:
        raise UserError("--router-samples and --router-epochs must be >= 1, --router-lr > 0, --router-projector-lr > 0")
    if len(args.task_names) > len(EXPERT_LETTERS):
        raise UserError(f"MR-LoRA's router names at most {len(EXPERT_LETTERS)} experts by letter; this task sequence "
                        f"has {len(args.task_names)} tasks")
    return args


# ---------------------------------------------------------------------------------------------- router prompt
def expert_name(task_name):
    """How the router prompt describes a task's expert: its task name as words ('image-qa' -> 'image qa')."""
    return task_name.replace("-", " ").replace("_", " ")


def router_prompt(instruction, names):
    """q_r of Eq. 2: the seen experts by letter, then the original request."""
    menu = " , ".join(f"{EXPERT_LETTERS[k]} {expert_name(n)}" for k, n in enumerate(names))
    return f"choose the expert for this request : {menu} . request : {instruction}"


def router_sample(s, names, k=None):
    """The routing version of sample s (same media); target = letter of expert k (training) or none (inference)."""
    letter = EXPERT_LETTERS[k] if k is not None else "A"
    return replace(s, instruction=router_prompt(s.instruction, names), target=letter, answers=[letter],
                   references=None, _ids=None)


def parse_letter(text, n_experts):
    """Expert index named by the router's output, or None (unparsable): the first word, without punctuation, must
    be one of the first n_experts upper-case letters. Empty, lower-case or out-of-range letters are not guessed."""
    words = text.split()
    w = words[0].strip(string.punctuation) if words else ""
    k = EXPERT_LETTERS.find(w) if len(w) == 1 else -1
    return k if 0 <= k < n_experts else None


def route(picks_text, n_experts):
    """Eq. 3 with the deterministic fallback: (expert index per sample, fell back? per sample)."""
    parsed = [parse_letter(o, n_experts) for o in picks_text]
    return [n_experts - 1 if k is None else k for k in parsed], [k is None for k in parsed]


# ---------------------------------------------------------------------------------------------- experts
def use(model, projectors, name):
    """Activate adapter `name` (an expert or the router) and its projector set."""
    model.llm.set_adapter(name)
    model.projectors = projectors[name]


def adapter_params(model, name):
    return [p for n, p in model.llm.named_parameters() if "lora_" in n and f".{name}." in n]


def train(model, projectors, name, data, args, t, epochs=None, lr=None, projector_lr=None, desc=None):
    """Eq. 1 / Eq. 2: CE on the targets, updating only adapter `name` and its projector set."""
    use(model, projectors, name)
    params = adapter_params(model, name) + list(projectors[name].parameters())
    for p in params:
        p.requires_grad_(True)
    opt = make_optimizer(model, args, params=params, lr=lr, projector_lr=projector_lr)   # fresh state per task
    # the experts' --epochs follow --lr-schedule; the router keeps its own constant --router-lr
    for samples in batches(data, args, t, desc=desc, epochs=epochs, opt=opt if epochs is None else None):
        b = model.collate(samples).to(args.device)
        loss = ce_loss(model(b), b.labels)
        check_finite(loss, desc, "--lr" if lr is None else "--router-lr")   # NaN / inf: stop, naming the step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def draw_router_samples(task, args, t):
    """M_t: --router-samples training samples of task t, drawn once when the task is learned (ids, for resume)."""
    rng = np.random.default_rng(task_seed(args, t, 3))
    n = min(args.router_samples, len(task.train))
    return [task.train[i].id for i in sorted(rng.choice(len(task.train), n, replace=False))]


def router_data(tasks, buffer, t):
    """The router's training set at step t: every buffered sample as a routing prompt over experts 0..t."""
    names = [task.name for task in tasks[:t + 1]]
    out = []
    for k, task in enumerate(tasks[:t + 1]):
        by_id = {s.id: s for s in task.train}
        out += [router_sample(by_id[i], names, k) for i in buffer[k]]
    return out


def router_accuracy(stats):
    """% of seen tasks' test samples routed to their own expert: the confusion matrix's diagonal over its total."""
    C = np.array(stats["confusion"])
    return float(100 * np.trace(C) / max(1, C.sum()))


def make_predict(model, projectors, tasks, t, oracle, stats):
    """Two-stage inference after step t (Eq. 3-4); routing counts go into `stats`."""
    names = [task.name for task in tasks[:t + 1]]
    truth = lambda s: names.index(s.task) if s.task in names else None

    @torch.no_grad()
    def predict(samples):
        if oracle:
            picks = [t if truth(s) is None else truth(s) for s in samples]
        else:
            use(model, projectors, "router")
            picks, fell = route(model.generate([router_sample(s, names) for s in samples], max_new_tokens=3), t + 1)
            for s, k, f in zip(samples, picks, fell):
                stats["routed"] += 1
                stats["fallbacks"] += f
                stats["text_fallbacks"] += int(f and s.modality == "text")
                if truth(s) is not None:           # a test sample of a seen task: its own expert is the right one
                    stats["seen_fallbacks"] += f
                    stats["confusion"][truth(s)][k] += 1   # row: the sample's task, column: the expert chosen
        out = [None] * len(samples)
        for k in sorted(set(picks)):              # one generate call per chosen expert
            idx = [i for i, p in enumerate(picks) if p == k]
            use(model, projectors, f"expert{k}")
            for i, o in zip(idx, model.generate([samples[i] for i in idx])):
                out[i] = o
        return out

    return predict


# ---------------------------------------------------------------------------------------------- training loop
def main(argv=None):
    args = get_args(argv)
    model, tasks, text = build_model(args)
    base = copy.deepcopy(model.projectors)          # every expert's / the router's projectors start from this init
    projectors = {}
    run = Run(args, tasks, text)
    for k in range(run.start):                      # re-create finished tasks' adapters, then load their weights
        add_lora(model, args, f"expert{k}")
        projectors[f"expert{k}"] = copy.deepcopy(base)
    if run.start > 0 and not args.oracle:
        add_lora(model, args, "router")
        projectors["router"] = copy.deepcopy(base)
    model.projectors = copy.deepcopy(base)          # scratch: the checkpoint's active projector set lands here
    extra = run.resume(model) or {"projectors": {}, "buffer": [], "router_steps": []}
    for name, sd in extra["projectors"].items():
        projectors[name].load_state_dict(sd)
    buffer, router_steps = extra["buffer"], extra["router_steps"]
    model.projectors = base
    run.zero_shot(model.generate)                   # the untrained base MLLM

    for t in range(run.start, len(tasks)):
        seed_everything(task_seed(args, t))
        name = f"expert{t}"
        add_lora(model, args, name)                 # fresh expert from the base, not from expert t-1
        projectors[name] = copy.deepcopy(base)
        train(model, projectors, name, tasks[t].train, args, t, desc=f"task {t + 1}/{len(tasks)} {tasks[t].name}")
        buffer.append(draw_router_samples(tasks[t], args, t))
        if not args.oracle:
            if "router" not in projectors:          # router_1 from the base; router_t continues from router_{t-1}
                seed_everything(task_seed(args, t, 2))
                add_lora(model, args, "router")
                projectors["router"] = copy.deepcopy(base)
            train(model, projectors, "router", router_data(tasks, buffer, t), args, t, epochs=args.router_epochs,
                  lr=args.router_lr, projector_lr=args.router_projector_lr, desc=f"router {t + 1}/{len(tasks)}")
        stats = {"routed": 0, "fallbacks": 0, "text_fallbacks": 0, "seen_fallbacks": 0,
                 "confusion": [[0] * (t + 1) for _ in range(t + 1)]}
        predict = make_predict(model, projectors, tasks, t, args.oracle, stats)
        state = {"projectors": {n: {k: v.detach().cpu().clone() for k, v in p.state_dict().items()}
                                for n, p in projectors.items()}, "buffer": buffer,
                 "router_steps": router_steps + [stats]}    # stats is filled by the evaluation inside end_task
        run.end_task(t, model, predict, extra=state)
        router_steps.append(stats)
        if not args.oracle:
            print(f"router after step {t + 1}: accuracy {router_accuracy(stats):.1f}% on "
                  f"{int(np.sum(stats['confusion']))} test samples of seen tasks "
                  f"({stats['seen_fallbacks']} fallbacks); all routed requests incl. unseen tasks and text-only: "
                  f"{stats['fallbacks']} fallbacks of {stats['routed']}", flush=True)
    if args.oracle:
        return run.finish()
    last = router_steps[-1]
    # after the last task every task is seen: accuracy and fallbacks over all tasks' test samples; text-only
    # requests (which the router never trained on) and all evaluations' fallbacks are reported apart
    return run.finish(router_accuracy=router_accuracy(last),
                      router_fallbacks=last["seen_fallbacks"], router_fallbacks_text=last["text_fallbacks"],
                      router_fallbacks_total=sum(s["fallbacks"] for s in router_steps),
                      router_accuracy_steps=[router_accuracy(s) for s in router_steps],
                      router_confusion=last["confusion"])


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
