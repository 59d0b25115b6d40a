"""Profile of one finetune training step and of evaluation on this machine (measure before optimising).

Builds the embedded default as the scripts do (common.build_model + common.add_lora), takes 16 training samples of
an image task and of an audio task and times baselines.train_step's sequence (collate -> forward -> ce_loss ->
backward -> AdamW step), after warm-up, median over --steps. FLOPs of one step (forward + backward) come from
torch.utils.flop_counter.FlopCounterMode; op shares from torch.profiler (self CPU time); a BLAS reference times the
model's own matmul shapes alone; evaluation times model.generate on --eval-samples test samples.

    python tools/step_bench.py --scenario micl --order 1 --seed 0 [--threads N] [--steps 30] [--logits all]

Nothing is written: --output-dir defaults to /tmp/step_bench (only checked, never created).
"""
import os, statistics, sys, time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common

p = common.shared_parser("step_bench", __doc__)
g = p.add_argument_group("bench")
g.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own choice)")
g.add_argument("--steps", type=int, default=30, help="timed steps per batch (median reported)")
g.add_argument("--warmup", type=int, default=5)
g.add_argument("--image-task", default="image-cap")
g.add_argument("--audio-task", default="audio-cap")
g.add_argument("--eval-samples", type=int, default=64)
g.add_argument("--top", type=int, default=15, help="profiler rows shown")
g.add_argument("--profile-steps", type=int, default=10, help="steps under torch.profiler for the op shares (0: none; "
               "with real weights its shape records outgrew 24 GB)")
g.add_argument("--logits", choices=["targets", "all"], default="targets", help="MLLM.forward keep=: logits at the "
               "positions a loss reads (the scripts' step) or at every position (the step before that change)")
argv = sys.argv[1:]
if "--output-dir" not in argv:
    argv += ["--output-dir", "/tmp/step_bench"]
args = common.parse_args(p, argv)
if args.threads:
    torch.set_num_threads(args.threads)
print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, interop {torch.get_num_interop_threads()}, "
      f"mkldnn {torch.backends.mkldnn.is_available()}, device {args.device}")

model, tasks, _ = common.build_model(args)
common.add_lora(model, args)
opt = common.make_optimizer(model, args)
by_name = {t.name: t for t in tasks}
cfg = model.llm.config.get_text_config()
D, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size


def step(samples, mark=lambda name: torch.autograd.profiler.record_function(name), times=None):
    """baselines.train_step for finetune (extra_loss 0.0), with each phase timed / marked."""
    t = [time.perf_counter()]
    with mark("collate"):
        b = model.collate(samples).to(args.device)
    t.append(time.perf_counter())
    with mark("forward"):
        logits = model(b, keep=args.logits)
        loss = common.ce_loss(logits, b.labels) + 0.0
        common.check_finite(loss)
    t.append(time.perf_counter())
    with mark("backward"):
        opt.zero_grad(set_to_none=True)
        loss.backward()
    t.append(time.perf_counter())
    with mark("optimizer"):
        opt.step()
        loss.item()
    t.append(time.perf_counter())
    if times is not None:
        times.append([b - a for a, b in zip(t, t[1:])] + [t[-1] - t[0]])
    return b


GROUPS = [("matmul (mm/addmm/bmm)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::addmm_", "aten::baddbmm")),
          ("attention / softmax", ("sdpa", "scaled_dot", "softmax", "attention")),
          ("element-wise mul", ("aten::mul",)), ("element-wise add/sub", ("aten::add", "aten::sub")),
          ("copies / cast / cat / index", ("copy_", "aten::to", "_to_copy", "aten::cat", "clone", "contiguous",
                                           "index", "masked_scatter", "aten::where", "aten::stack")),
          ("loss (cross-entropy, log-softmax, nll)", ("nll_loss", "log_softmax", "cross_entropy")),
          ("optimizer (_foreach_*, lerp, addcdiv, sqrt)", ("_foreach", "lerp", "addcdiv", "addcmul", "aten::sqrt"))]


def group_of(name):
    if name in ("collate", "forward", "backward", "optimizer"):
        return "Python / dispatch between ops (self time of the marked phases)"
    for g, keys in GROUPS:
        if any(k in name for k in keys):
            return g
    return "other"


def bench_batch(kind, samples):
    print(f"\n=== {kind} batch: {samples[0].task}, {len(samples)} samples")
    b = model.collate(samples)
    L, K = b.input_ids.shape[1], samples[0].feat.shape[0]
    for _ in range(args.warmup):
        step(samples)
    with FlopCounterMode(display=False) as fc:
        step(samples)
    flops = fc.get_total_flops()
    per_op = {str(k).split(".")[-1]: v for k, v in fc.get_flop_counts()["Global"].items()}
    times = []
    for _ in range(args.steps):
        step(samples, times=times)
    med = [statistics.median(c) for c in zip(*times)]
    ms, gf = med[-1] * 1e3, flops / 1e9
    print(f"positions/sample {L} ({K} media tokens), step {ms:.1f} ms median over {args.steps} "
          f"(min {min(t[-1] for t in times) * 1e3:.1f}), {gf:.2f} GFLOP/step -> {gf / med[-1]:.1f} GFLOP/s")
    print("  FLOPs by op: " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in sorted(per_op.items(), key=lambda x: -x[1])))
    print("  wall shares (perf_counter): " + ", ".join(
        f"{n} {m * 1e3:.1f} ms ({100 * m / med[-1]:.0f} %)" for n, m in zip(
            ("collate", "forward+loss", "backward", "optimizer"), med)))
    result = dict(kind=kind, L=L, ms=ms, gflop=gf, gflops=gf / med[-1])
    if not args.profile_steps:
        return result
    P = args.profile_steps
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(P):
            step(samples)
    ev = prof.key_averages()
    r = args.lora_r
    lora = lambda e: any(r in (s[-2:] if len(s) >= 2 else []) for s in e.input_shapes if isinstance(s, list))
    sh = [e for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::mm"]
    tot = sum(e.self_cpu_time_total for e in ev)
    share = {}
    for e in ev:
        share[group_of(e.key)] = share.get(group_of(e.key), 0) + e.self_cpu_time_total
    print("  profiler groups (self CPU): " + ", ".join(
        f"{k} {100 * v / tot:.0f} %" for k, v in sorted(share.items(), key=lambda x: -x[1])))
    others = sorted((e for e in ev if group_of(e.key) == "other"), key=lambda e: -e.self_cpu_time_total)[:6]
    print("  largest in 'other': " + ", ".join(f"{e.key} {100 * e.self_cpu_time_total / tot:.1f} %" for e in others))
    tot_sh = sum(e.self_cpu_time_total for e in ev)
    a = sum(e.self_cpu_time_total for e in sh if lora(e))
    n = sum(e.count for e in sh if lora(e)) / P
    print(f"  aten::mm with a rank-{r} (LoRA A/B) operand: {100 * a / tot_sh:.1f} % of self CPU, {n:.0f} calls/step")
    mm_s = sum(e.self_cpu_time_total for e in ev if group_of(e.key).startswith("matmul")) / P / 1e6
    print(f"  matmuls inside the step: {1e3 * mm_s:.1f} ms/step self time -> {gf / mm_s:.0f} GFLOP/s on the counted "
          f"FLOPs (profiler on; its per-op overhead included)")
    print(f"  top {args.top} ops by self CPU time ({P} steps; calls per step):")
    for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f"    {e.key:45s} {100 * e.self_cpu_time_total / tot:5.1f} %  {e.count / P:6.1f} calls")
    return result


def blas_ref(M):
    """GFLOP/s of torch.mm alone on the step's linear shapes (M = B*L rows): best and median of 200 calls."""
    out = {}
    for name, (k, n) in {"q/k/v/o": (D, D), "gate/up": (D, I), "down": (I, D), "lm_head": (D, V),
                         "lora A": (D, args.lora_r), "lora B": (args.lora_r, D)}.items():
        a, w = torch.randn(M, k), torch.randn(k, n)
        for _ in range(20):
            a @ w
        ts = []
        for _ in range(200):
            t = time.perf_counter(); a @ w; ts.append(time.perf_counter() - t)
        out[name] = 2 * M * k * n / min(ts) / 1e9, 2 * M * k * n / statistics.median(ts) / 1e9
    print(f"  BLAS alone, M={M}: " + ", ".join(f"{k} ({M}x{s}) {v[0]:.0f} (median {v[1]:.0f}) GFLOP/s" for (k, v), s in zip(
        out.items(), (f"{D}@{D}x{D}", f"{D}@{D}x{I}", f"{I}@{I}x{D}", f"{D}@{D}x{V}", f"{D}@{D}x{args.lora_r}",
                      f"{args.lora_r}@{args.lora_r}x{D}"))))
    return out


res = []
for kind, name in (("image", args.image_task), ("audio", args.audio_task)):
    r = bench_batch(kind, by_name[name].train[:args.batch_size])
    r["blas"] = blas_ref(args.batch_size * r["L"])
    res.append(r)

print("\n=== evaluation: model.generate (greedy, <= 20 new tokens, batch --eval-batch-size)")
for name in [n for n in by_name if n.endswith("-cap") or n in (args.image_task, args.audio_task)]:
    test = by_name[name].test[:args.eval_samples]
    model.generate(test[:8], batch_size=args.eval_batch_size)      # warm-up
    ts = []
    for _ in range(3):
        t = time.perf_counter(); model.generate(test, batch_size=args.eval_batch_size); ts.append(time.perf_counter() - t)
    print(f"  {name:10s} {len(test)} samples: {1e3 * min(ts) / len(test):.2f} ms/sample (best of 3; median "
          f"{1e3 * statistics.median(ts) / len(test):.2f})")
name = "image-cap" if "image-cap" in by_name else args.image_task
with profile(activities=[ProfilerActivity.CPU]) as prof:
    model.generate(by_name[name].test[:args.eval_samples], batch_size=args.eval_batch_size)
ev = prof.key_averages()
tot = sum(e.self_cpu_time_total for e in ev)
print(f"  generate {name}: top ops by self CPU time:")
for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:10]:
    print(f"    {e.key:45s} {100 * e.self_cpu_time_total / tot:5.1f} %  {e.count:6d} calls")

print("\n| batch | positions/sample | ms/step | GFLOP/step | GFLOP/s | BLAS alone, gate/up shape, best of 200 |")
print("|---|---|---|---|---|---|")
for r in res:
    print(f"| {r['kind']} (16) | {r['L']} | {r['ms']:.1f} | {r['gflop']:.2f} | {r['gflops']:.1f} | "
          f"{r['blas']['gate/up'][0]:.0f} GFLOP/s (median {r['blas']['gate/up'][1]:.0f}) |")
