"""Training and generation throughput and peak GPU memory of one LLM through common.build_model (bf16 base, fp32
LoRA and projectors on cuda): per task, 3 warm-up + STEPS timed AdamW steps on one batch of BS samples, then greedy
generation on 64 test samples of each captioning task. Image tokens follow data.load.IMAGE_TOKENS.

    BS=16 STEPS=10 python tools/gpu_bench.py /tmp/m qwen2.5-0.5b out.json     # folders from real_size_models.py
"""
import json, os, sys, time

import torch

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
for task in tasks:
    b = model.collate(task.train[:BS]).to(args.device)
    def step():
        loss = common.ce_loss(model(b), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(3):
        step()
    sync(); t = time.time()
    for _ in range(steps):
        step()
    sync()
    r[f"train samples/s {task.name} (bs {BS}, seq {b.input_ids.shape[1]})"] = round(BS * steps / (time.time() - t), 1)
    if task.name.endswith("cap"):
        sync(); t = time.time()
        model.generate(task.test, batch_size=64)
        sync()
        r[f"generate samples/s {task.name} (64, greedy, <= 20 tokens)"] = round(len(task.test) / (time.time() - t), 1)
if cuda:
    r["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
r["total_s"] = round(time.time() - t0, 1)
print(json.dumps(r, indent=1), flush=True)
json.dump(r, open(out, "w"), indent=1)
