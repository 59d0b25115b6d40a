"""Continual-learning baselines for MLLMs: fine-tuning, joint training, replay, LwF, EWC, O-LoRA, MoELoRA (SPEC 5).

Every baseline trains LoRA on the frozen LLM plus the shared (trainable) projectors over the task sequence; each is a
class below with the hooks the loop at the bottom calls (before_task, batch, extra_loss, after_task). docs/baselines.md.

  finetune  one LoRA trained on task 1, 2, ..., T in turn, nothing against forgetting (lower bound):  L = L_CE
  joint     one LoRA on the union of all tasks at once (upper bound; R has one row; same --lr / --epochs as a task)
  replay    experience replay, tiny episodic memory (Chaudhry et al. 2019, arXiv:1902.10486): after task t a random
            --replay-ratio (2%) of its training set enters the buffer M; later steps join a replay batch from M.
                L = L_CE(B_cur  U  B_M),   |B_M| = min(--replay-batch-size, |M|)
  lwf       Learning without Forgetting (Li & Hoiem, TPAMI 2017, arXiv:1606.09282): the model after task t-1 is a
            frozen teacher; on the CURRENT task's data the student also matches its softened target-token outputs.
                L = L_CE + w T^2 KL(softmax(z_teacher / T) || softmax(z_student / T))   (T = 2, w = 1)
  ewc       Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017, arXiv:1612.00796), LoRA + projectors:
                F_t,i = 1/N sum_n (d L_CE(x_n) / d theta_i)^2  at theta*_t          (per-sample, empirical Fisher)
                F = sum_{s<=t} F_s,   theta* = theta after task t
                L = L_CE + (lambda / 2) sum_i F_i (theta_i - theta*_i)^2
  olora     O-LoRA (Wang et al., EMNLP Findings 2023, arXiv:2310.14152): a new LoRA per task; earlier LoRAs stay
            active (summed) but frozen; the new A is pushed orthogonal to every earlier A, per LoRA-wrapped layer l:
                L = L_CE + lambda_1 sum_l sum_{s<t} sum_{jk} |A_s^l (A_t^l)^T|_jk
                         + lambda_2 sum_l (||A_t^l||_2 + ||B_t^l||_2)                 (lambda_1 = 0.5, lambda_2 = 0)
  moelora   MoELoRA (CoIN, Chen et al. 2024, arXiv:2403.08350): E LoRA experts of rank r/E + a token gate per layer,
                h = W0 x + (alpha / r) sum_e g_e(x) B_e A_e x,  g(x) = softmax(W_g x);  L = L_CE, tasks in turn

Deviations from the papers / official code (and why):
  - Projectors stay trainable in every method (as in finetune); only EWC's Fisher protects them (SPEC 5).
  - replay: ER's replay batch (current batch size) is capped by the memory and drawn without replacement: 2% of 320
    = 6 per task, so the whole memory (<= 30 samples) joins every batch; token-mean CE over the joined batch (as ER).
  - lwf: the teacher is a deep copy of the MLLM after task t-1 (LLM + LoRA + projectors); KD on teacher-forced
    target tokens of the current data. LwF had one head per task; an LLM has one vocabulary, so the KD pulls the
    very logits the CE trains towards the old model's answer (less plasticity).
  - ewc: empirical Fisher (CE gradient on the ground-truth target, per sample), not the true Fisher (y ~ p_theta);
    one anchor theta* (latest task) with Fishers summed over tasks (Huszar 2018's correction, arXiv:1712.03847,
    = online EWC with gamma = 1) instead of one penalty per task; lambda = 400 as TRACE's EWC baseline for LLMs
    (Wang et al. 2023, arXiv:2310.06762).
  - olora: the official code concatenates finished LoRAs into one growing lora_A/lora_B; separate peft adapters,
    all active, compute the same sum. The L2 term uses the Frobenius norm (not squared), as the official code.
  - moelora: experts = row blocks of one peft LoRA: CoIN's sum over E Linear pairs, saved / resumed as any LoRA.
  - moelora: A keeps peft's Kaiming init (CoIN: N(0, 0.01)), so that E = 1 is exactly finetune.
  - moelora: E = 4 (--moe-experts) at r = 16 (CoIN: 8 at r = 128; 8 here would leave rank 2 per expert).

Usage:
    python baselines.py --method finetune --order 1
    python baselines.py --method joint --scenario micl --order 2 --seed 1
    python baselines.py --method olora --olora-lambda1 0.5 --olora-lambda2 0     # or --method ewc --ewc-lambda 400
"""
import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import (Run, UserError, add_lora, batches, build_model, ce_loss, check_finite, lora_layers,
                    make_optimizer, parse_args, seed_everything, shared_parser, target_logits, task_seed)

METHODS = ["finetune", "joint", "replay", "lwf", "ewc", "olora", "moelora"]


def get_args(argv=None):
    p = shared_parser("baselines", __doc__)
    p.add_argument("--method", choices=METHODS, default="finetune")
    g = p.add_argument_group("replay")
    g.add_argument("--replay-ratio", type=float, default=0.02, help="fraction of each finished task kept in memory")
    g.add_argument("--replay-batch-size", type=int, default=None, help="replay samples per step (default --batch-size)")
    g = p.add_argument_group("lwf")
    g.add_argument("--lwf-temperature", type=float, default=2.0, help="T of the softened distributions")
    g.add_argument("--lwf-weight", type=float, default=1.0, help="w, weight of the distillation loss")
    g = p.add_argument_group("ewc")
    g.add_argument("--ewc-lambda", type=float, default=400.0, help="lambda, strength of the quadratic penalty")
    g = p.add_argument_group("olora")
    g.add_argument("--olora-lambda1", type=float, default=0.5, help="weight of the orthogonality loss")
    g.add_argument("--olora-lambda2", type=float, default=0.0, help="weight of the L2 norm of the new LoRA")
    g = p.add_argument_group("moelora")
    g.add_argument("--moe-experts", type=int, default=4, help="E, LoRA experts per layer (rank --lora-r / E each)")
    args = parse_args(p, argv, run_name=p.parse_args(argv).method)
    if not 0 < args.replay_ratio <= 1:
        raise UserError(f"--replay-ratio must be in (0, 1], got {args.replay_ratio}")
    if args.replay_batch_size is not None and args.replay_batch_size < 1:
        raise UserError(f"--replay-batch-size must be >= 1, got {args.replay_batch_size}")
    if args.lwf_temperature <= 0:
        raise UserError(f"--lwf-temperature must be > 0, got {args.lwf_temperature}")
    for flag in ("lwf_weight", "ewc_lambda", "olora_lambda1", "olora_lambda2"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    if args.moe_experts < 1 or args.lora_r % args.moe_experts:
        raise UserError(f"--moe-experts must be >= 1 and divide --lora-r {args.lora_r}, got {args.moe_experts}")
    return args


# ---------------------------------------------------------------------------------------------- finetune
class Finetune:
    """L = L_CE. The base class: every hook is a no-op; `state` is what --resume must restore (run extra)."""

    def __init__(self, model, args, tasks):
        self.model, self.args, self.tasks, self.state = model, args, tasks, {}

    def setup(self, done):
        """Create the adapters the first `done` finished tasks had, before the checkpoint is loaded."""
        add_lora(self.model, self.args)

    def before_task(self, t):
        pass

    def batch(self, samples):
        return samples

    def extra_loss(self, b, logits):
        return 0.0

    def after_task(self, t):
        pass


# ---------------------------------------------------------------------------------------------- replay (ER)
def draw_buffer(n, ratio, seed):
    """Indices of a random `ratio` of a task's n training samples (at least one)."""
    k = max(1, round(ratio * n))
    return sorted(np.random.default_rng(seed).choice(n, size=min(k, n), replace=False).tolist())


class Replay(Finetune):
    """L = L_CE(B_cur U B_M): every step joins a replay batch from the memory M of earlier tasks' samples."""

    def before_task(self, t):
        self.rng = np.random.default_rng(task_seed(self.args, t, 3))
        self.memory = [self.tasks[s].train[i] for s, i in self.state.get("memory", [])]

    def batch(self, samples):
        if not self.memory:
            return samples
        k = min(self.args.replay_batch_size or self.args.batch_size, len(self.memory))
        return samples + [self.memory[i] for i in self.rng.choice(len(self.memory), size=k, replace=False)]

    def after_task(self, t):
        idx = draw_buffer(len(self.tasks[t].train), self.args.replay_ratio, task_seed(self.args, t, 2))
        self.state["memory"] = self.state.get("memory", []) + [(t, i) for i in idx]


# ---------------------------------------------------------------------------------------------- LwF
def kd_loss(student, teacher, T):
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), mean over target tokens; inputs (N_tokens, V)."""
    return T * T * F.kl_div(F.log_softmax(student / T, -1), F.log_softmax(teacher / T, -1), log_target=True,
                            reduction="batchmean")


class LwF(Finetune):
    """L = L_CE + w T^2 KL(p_teacher^T || p_student^T) on the current task's target tokens."""

    def before_task(self, t):
        self.teacher = None
        if t > 0:   # frozen copy of the model after task t-1 (on --resume: the loaded checkpoint)
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)

    def extra_loss(self, b, logits):
        if self.teacher is None:
            return 0.0
        with torch.no_grad():
            teacher = target_logits(self.teacher(b), b.labels)                        # (N_tokens, V)
        return self.args.lwf_weight * kd_loss(target_logits(logits, b.labels), teacher, self.args.lwf_temperature)


# ---------------------------------------------------------------------------------------------- EWC
def ewc_penalty(params, fisher, anchor, lam):
    """(lambda / 2) sum_i F_i (theta_i - theta*_i)^2 over the named parameters that have a Fisher."""
    return lam / 2 * sum((fisher[n] * (p - anchor[n]) ** 2).sum() for n, p in params.items() if n in fisher)


def empirical_fisher(model, samples, args):
    """F_i = 1/N sum_n (d L_CE(x_n) / d theta_i)^2 over the trainable parameters, one sample at a time."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    for s in samples:
        b = model.collate([s]).to(args.device)
        grads = torch.autograd.grad(ce_loss(model(b), b.labels), list(params.values()), allow_unused=True)
        for n, g in zip(params, grads):
            if g is not None:                       # projectors of other modalities get no gradient
                fisher[n] += g.detach() ** 2 / len(samples)
    return fisher


class EWC(Finetune):
    """L = L_CE + (lambda / 2) sum_i F_i (theta_i - theta*_i)^2."""

    def extra_loss(self, b, logits):
        if "fisher" not in self.state:
            return 0.0
        params = dict(self.model.named_parameters())
        return ewc_penalty(params, self.state["fisher"], self.state["anchor"], self.args.ewc_lambda)

    def after_task(self, t):
        f_t = empirical_fisher(self.model, self.tasks[t].train, self.args)
        old = self.state.get("fisher", {})
        self.state["fisher"] = {n: f + old.get(n, 0) for n, f in f_t.items()}          # F = sum_{s<=t} F_s
        self.state["anchor"] = {n: p.detach().clone() for n, p in self.model.named_parameters() if n in f_t}


# ---------------------------------------------------------------------------------------------- O-LoRA
def orthogonality_loss(a_new, a_olds):
    """sum_{s<t} sum_{jk} |A_s A_t^T|_jk for one layer; A: (r, d_in), A_s A_t^T: (r, r)."""
    return sum((a_old @ a_new.T).abs().sum() for a_old in a_olds)


class OLoRA(Finetune):
    """L = L_CE + lambda_1 sum_l sum_{s<t} |A_s A_t^T|_1 + lambda_2 sum_l (||A_t|| + ||B_t||); a new LoRA per task."""

    def setup(self, done):
        for t in range(done):
            self._add_adapter(t)

    def before_task(self, t):
        self._add_adapter(t)

    def _add_adapter(self, t):
        """Add LoRA `task{t}`; all task LoRAs stay active (summed), only the newest one is trainable."""
        add_lora(self.model, self.args, name=f"task{t}")
        self.names = [f"task{s}" for s in range(t + 1)]
        self.model.llm.base_model.set_adapter(self.names)      # peft marks every active adapter trainable ...
        for n, p in self.model.llm.named_parameters():         # ... so re-freeze the earlier ones
            if "lora_" in n:
                p.requires_grad_(f".task{t}." in n)

    def extra_loss(self, b, logits):
        new, olds = self.names[-1], self.names[:-1]
        orth, l2 = 0.0, 0.0
        for m in lora_layers(self.model.llm).values():
            orth = orth + orthogonality_loss(m.lora_A[new].weight, [m.lora_A[s].weight for s in olds])
            l2 = l2 + m.lora_A[new].weight.norm() + m.lora_B[new].weight.norm()
        return self.args.olora_lambda1 * orth + self.args.olora_lambda2 * l2


# ---------------------------------------------------------------------------------------------- MoELoRA
class GatedA(nn.Linear):
    """lora_A of a MoELoRA layer: the r rows of A are E experts of r/E rows; expert e's output is scaled by its
    token-level gate g_e(x) = softmax(W_g x)_e, so peft's lora_B(lora_A(x)) * scaling is the MoE sum."""

    def __init__(self, a, experts):
        super().__init__(a.in_features, a.out_features, bias=False)
        self.weight = a.weight                                  # peft's initialised A, kept as it is
        self.experts = experts
        self.gate = nn.Linear(a.in_features, experts, bias=False)      # W_g (nn.Linear init, as CoIN's router)

    def gates(self, x):
        return torch.softmax(self.gate(x), dim=-1)                     # g(x) = softmax(W_g x), (..., E)

    def forward(self, x):
        h = F.linear(x, self.weight)                                   # A x = [A_1 x; ...; A_E x], (..., r)
        g = self.gates(x)
        return (h.unflatten(-1, (self.experts, -1)) * g.unsqueeze(-1)).flatten(-2)   # [g_1 A_1 x; ...; g_E A_E x]


def add_moe_experts(llm, experts, adapter="default"):
    """Turn every LoRA layer of `adapter` into E gated experts: h = W0 x + scaling sum_e g_e(x) B_e A_e x."""
    for m in lora_layers(llm, adapter).values():
        m.lora_A[adapter] = GatedA(m.lora_A[adapter], experts)


class MoELoRA(Finetune):
    """L = L_CE with one MoELoRA (E gated rank-r/E experts per layer) trained on every task in turn."""

    def setup(self, done):
        super().setup(done)                                            # finetune's LoRA, then its experts
        add_moe_experts(self.model.llm, self.args.moe_experts)


# ---------------------------------------------------------------------------------------------- training loop
METHOD = {"finetune": Finetune, "joint": Finetune, "replay": Replay, "lwf": LwF, "ewc": EWC, "olora": OLoRA,
          "moelora": MoELoRA}


def train_step(model, opt, samples, args, method):
    """One optimiser step of L = L_CE(target tokens) + the method's extra loss."""
    b = model.collate(samples).to(args.device)
    logits = model(b)
    loss = ce_loss(logits, b.labels) + method.extra_loss(b, logits)
    check_finite(loss)                          # NaN / inf: stop, naming the task and step
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def main(argv=None):
    args = get_args(argv)
    model, tasks, text = build_model(args)
    method = METHOD[args.method](model, args, tasks)
    steps = ["joint"] if args.method == "joint" else None
    run = Run(args, tasks, text, steps=steps)
    method.setup(run.start)
    method.state = run.resume(model) or {}
    run.zero_shot(model.generate)
    if args.method == "joint":
        # Joint: every task's training data in one shuffled stream, same epochs as each sequential task.
        seed_everything(task_seed(args, 0))
        data = [s for task in tasks for s in task.train]
        opt = make_optimizer(model, args)
        for samples in batches(data, args, 0, desc="joint (all tasks)", opt=opt):
            train_step(model, opt, samples, args, method)
        run.end_task(0, model, model.generate)
        return run.finish()

    for t in range(run.start, len(tasks)):
        seed_everything(task_seed(args, t))
        method.before_task(t)
        opt = make_optimizer(model, args)       # fresh optimiser state per task, as in sequential fine-tuning
        for samples in batches(tasks[t].train, args, t, desc=f"task {t + 1}/{len(tasks)} {tasks[t].name}", opt=opt):
            train_step(model, opt, method.batch(samples), args, method)
        method.after_task(t)
        run.end_task(t, model, model.generate, extra=method.state)
    return run.finish()


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
