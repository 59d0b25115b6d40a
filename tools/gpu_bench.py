"""Training and generation throughput and peak GPU memory of one LLM through common.build_model (bf16 base, fp32
LoRA and projectors on cuda): per task, 3 warm-up + STEPS timed AdamW steps on one batch of BS samples, then greedy
generation on 64 test samples of each captioning task. Image tokens follow data.load.IMAGE_TOKENS.

    BS=16 STEPS=10 python tools/gpu_bench.py /tmp/m qwen2.5-0.5b out.json     # folders from real_size_models.py
    VARIANT=compile+target BS=16 python tools/gpu_bench.py /tmp/m qwen2.5-0.5b out.json

VARIANT (training steps only; generation is always eager) is one of
    eager           the scripts' step: MLLM.forward -> (B, L, V) float32 logits -> common.ce_loss
    compile         the LLM call through torch.compile(dynamic=True) of a function taking the LLM as an argument (a
                    deep copy of the model, e.g. a teacher, then gets its own guards instead of the original's graph)
    target          logits only where a target token is predicted: lm_head on those hidden states, (N_target, V),
                    never the (B, L, V) float32 tensor (152k-word vocabularies); mean CE over the same tokens
    compile+target  both
"""
import json, os, sys, time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import baselines, common
import data.load
root, name, out = sys.argv[1:4]
cuda = torch.cuda.is_available()
sync = torch.cuda.synchronize if cuda else (lambda: None)
t0 = time.time()
BS, steps = int(os.environ.get("BS", "16")), int(os.environ.get("STEPS", "10"))
args = baselines.get_args(["--method", "finetune", "--order", "1", "--llm", f"{root}/{name}",
                           "--image-encoder", f"{root}/clip-vit-b16", "--audio-encoder", f"{root}/ast-audioset",
                           "--train-limit", str(max(32, BS)), "--test-limit", "64", "--batch-size", str(BS), "--lr", "2e-4",
                           "--output-dir", f"/tmp/bench-{name}"])
model, tasks, text = common.build_model(args)
common.add_lora(model, args)
r = {"llm": name, "image_tokens": data.load.IMAGE_TOKENS, "build_s (encode + load)": round(time.time() - t0, 1),
     "llm_params_b": round(sum(p.numel() for p in model.llm.parameters()) / 1e9, 3),
     "trainable_m": round(sum(p.numel() for p in common.trainable(model)) / 1e6, 2),
     "device": torch.cuda.get_device_name(0) if cuda else "cpu"}
opt = common.make_optimizer(model, args)
VARIANT = os.environ.get("VARIANT", "eager")
if VARIANT not in ("eager", "compile", "target", "compile+target"):
    sys.exit(f"gpu_bench.py: VARIANT={VARIANT!r}; expected eager, compile, target or compile+target")
r["variant"] = VARIANT


def llm_logits(llm, **kw):
    return llm(**kw).logits                                                  # (B, L, V)


def llm_hidden(llm, **kw):
    return llm.get_base_model().get_decoder()(**kw).last_hidden_state       # (B, L, D), LoRA layers included


if "compile" in VARIANT:
    llm_logits, llm_hidden = torch.compile(llm_logits, dynamic=True), torch.compile(llm_hidden, dynamic=True)


def loss_of(b):
    if VARIANT == "eager":
        return common.ce_loss(model(b), b.labels)                             # exactly the scripts' step
    kw = dict(attention_mask=b.attention_mask, position_ids=b.position_ids)
    with model.autocast():
        emb = model.embed(b)
        if "target" not in VARIANT:
            return common.ce_loss(llm_logits(model.llm, inputs_embeds=emb, **kw).float(), b.labels)
        keep = b.labels[:, 1:] != -100                                      # position i predicts token i + 1
        h = llm_hidden(model.llm, inputs_embeds=emb, **kw)[:, :-1][keep]    # (N_target, D)
        z = model.llm.get_output_embeddings()(h)                            # (N_target, V)
    return F.cross_entropy(z.float(), b.labels[:, 1:][keep])


for task in tasks:
    b = model.collate(task.train[:BS]).to(args.device)
    def step():
        loss = loss_of(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync(); t = time.time()
    r[f"first step loss {task.name}"] = round(float(step()), 4)             # the same batch and weights per variant
    for _ in range(2):
        step()
    sync()
    r[f"warm-up s {task.name} (3 steps, compiling included)"] = round(time.time() - t, 1)
    sync(); t = time.time()
    for _ in range(steps):
        step()
    sync()
    r[f"train samples/s {task.name} (bs {BS}, seq {b.input_ids.shape[1]})"] = round(BS * steps / (time.time() - t), 1)
    if cuda:
        r[f"train peak GiB {task.name}"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if task.name.endswith("cap"):
        sync(); t = time.time()
        model.generate(task.test, batch_size=64)
        sync()
        r[f"generate samples/s {task.name} (64, greedy, <= 20 tokens)"] = round(len(task.test) / (time.time() - t), 1)
if cuda:
    r["peak_gpu_gib (last task, generation included)"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
else:
    import resource
    r["peak_rss_gib (whole process)"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
r["total_s"] = round(time.time() - t0, 1)
print(json.dumps(r, indent=1), flush=True)
json.dump(r, open(out, "w"), indent=1)
