"""Peak memory of the loss on a 152k-word vocabulary: (B, L, V) float32 logits vs logits at the target positions only.

One process per variant (peak RSS is per process). The LM head has Qwen2.5-0.5B's shape (151936 x 896, bf16, random);
hidden states (B, L, 896) bf16 stand in for the LLM's last layer; the first L - T positions of every sample are
prompt / media (label -100), the last T are targets. Each run: forward, loss, backward, then peak RSS minus the RSS
before the loss.

    python tools/logits_memory.py full   [B L T]       # MLLM.forward's way: lm_head on every position -> ce_loss
    python tools/logits_memory.py target [B L T]       # lm_head on the N = B*T target positions only
"""
import os, resource, sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import ce_loss

if len(sys.argv) not in (2, 5) or sys.argv[1] not in ("full", "target") or not all(a.isdigit() for a in sys.argv[2:]):
    sys.exit("usage: python tools/logits_memory.py full|target [B L T]  (T target tokens per sample, T < L)")
mode, (B, L, T) = sys.argv[1], (list(map(int, sys.argv[2:5])) or [16, 81, 12])
if not (B >= 1 and 1 <= T < L):
    sys.exit(f"tools/logits_memory.py: need B >= 1 and 1 <= T < L, got B {B} L {L} T {T}")
V, D = 151936, 896
torch.manual_seed(0)
head = torch.nn.Linear(D, V, bias=False).to(torch.bfloat16).requires_grad_(False)   # frozen, as the LLM's
h = torch.randn(B, L, D, dtype=torch.bfloat16, requires_grad=True)
labels = torch.full((B, L), -100)
labels[:, L - T:] = torch.randint(V, (B, T))
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20             # GiB (ru_maxrss is KiB)
before = rss()
if mode == "full":
    loss = ce_loss(head(h).float(), labels)                                          # (B, L, V) float32
else:
    keep = labels[:, 1:] != -100                                                     # position i predicts i + 1
    loss = F.cross_entropy(head(h[:, :-1][keep]).float(), labels[:, 1:][keep])       # (N, V) float32
loss.backward()
print(f"{mode}: B {B} L {L} targets/sample {T} V {V}: loss {loss.item():.4f}, peak RSS {rss():.2f} GiB "
      f"({rss() - before:+.2f} GiB for the loss and its backward; (B, L, V) float32 is {B * L * V * 4 / 2**30:.2f} GiB)")
