"""Continual-learning baselines for MLLMs: sequential fine-tuning, joint training (upper bound), and more.

All baselines share one LoRA on the LLM plus per-modality projectors, trained over the task sequence
(SPEC 5). Each method is one clearly separated section below; the training loop at the bottom calls its pieces.

  finetune  one LoRA trained on task 1, 2, ..., T in turn, nothing done against forgetting (lower bound).
  joint     one LoRA trained on the union of all tasks at once (upper bound); R has a single row.

Usage:
    python baselines.py --method finetune --order 1
    python baselines.py --method joint --scenario micl --order 2 --seed 1
"""
import torch

from common import (Run, add_lora, batches, build_model, ce_loss, make_optimizer, parse_args, seed_everything,
                    shared_parser, task_seed)

METHODS = ["finetune", "joint"]


def get_args(argv=None):
    p = shared_parser("baselines", __doc__)
    p.add_argument("--method", choices=METHODS, default="finetune")
    args = p.parse_args(argv)
    return parse_args(p, argv, run_name=args.method)


# ---------------------------------------------------------------------------------------------- training loop
def train_step(model, opt, samples, args):
    """One optimiser step of the plain next-token loss L_CE on the target tokens."""
    b = model.collate(samples).to(args.device)
    loss = ce_loss(model(b), b.labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def main(argv=None):
    args = get_args(argv)
    model, tasks, text = build_model(args)
    add_lora(model, args)
    steps = ["joint"] if args.method == "joint" else None
    run = Run(args, tasks, text, steps=steps)
    run.resume(model)
    run.zero_shot(model.generate)
    if args.method == "joint":
        # Joint: every task's training data in one shuffled stream, same epochs as each sequential task.
        seed_everything(task_seed(args, 0))
        data = [s for task in tasks for s in task.train]
        opt = make_optimizer(model, args)
        for samples in batches(data, args, 0, desc="joint (all tasks)"):
            train_step(model, opt, samples, args)
        run.end_task(0, model, model.generate)
        return run.finish()

    for t in range(run.start, len(tasks)):
        seed_everything(task_seed(args, t))
        opt = make_optimizer(model, args)       # fresh optimiser state per task, as in sequential fine-tuning
        for samples in batches(tasks[t].train, args, t, desc=f"task {t + 1}/{len(tasks)} {tasks[t].name}"):
            train_step(model, opt, samples, args)
        run.end_task(t, model, model.generate)
    return run.finish()


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
