"""Real-size architectures with random weights, saved as Hugging Face folders, for speed / memory checks on a GPU
machine without network: Qwen2.5-0.5B / 1.5B / 7B configs (with the benchmark's word-level tokenizer), CLIP ViT-B/16
and AST (AudioSet config), all stored in bf16. Random weights: use them for throughput and memory, never accuracy.

    python tools/real_size_models.py /tmp/m qwen2.5-0.5b clip-vit-b16 ast-audioset [qwen2.5-1.5b qwen2.5-7b]
    SMALL=1 python tools/real_size_models.py ...      # shrunken versions, a CPU dry run of the plumbing
"""
import os, sys, time, torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import generate as G
from data.tiny import _build_tokenizer
from transformers import (ASTConfig, ASTFeatureExtractor, ASTModel, CLIPConfig, CLIPImageProcessor, CLIPModel,
                          Qwen2Config, Qwen2ForCausalLM)
root, names = sys.argv[1], sys.argv[2:]
small = os.environ.get("SMALL") == "1"
dev = "cuda" if torch.cuda.is_available() else "cpu"
tok = _build_tokenizer(G.vocabulary())
LLMS = {"qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
        "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
        "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                           num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)}
SHRINK = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=1000)
ENCODERS = ("clip-vit-b16", "ast-audioset")
unknown = [n for n in names if n not in LLMS and n not in ENCODERS]
if unknown:
    sys.exit(f"real_size_models.py: unknown model(s) {unknown}; expected some of {sorted(LLMS) + list(ENCODERS)}")
torch.set_default_dtype(torch.bfloat16)
for name in names:
    t = time.time()
    path = os.path.join(root, name)
    if name in LLMS:
        cfg = dict(LLMS[name], **(SHRINK if small else {}))
        torch.manual_seed(0)
        with torch.device(dev):
            m = Qwen2ForCausalLM(Qwen2Config(**cfg, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                             pad_token_id=tok.pad_token_id))
        tok.save_pretrained(path)
    elif name == "clip-vit-b16":
        v = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16,
                 image_size=224) if not small else dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                         num_attention_heads=2, patch_size=16, image_size=224)
        with torch.device(dev):
            m = CLIPModel(CLIPConfig(vision_config=v, text_config=dict(hidden_size=64, intermediate_size=128,
                          num_hidden_layers=1, num_attention_heads=2), projection_dim=64))
        CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(path)
    elif name == "ast-audioset":
        with torch.device(dev):
            m = ASTModel(ASTConfig() if not small else ASTConfig(hidden_size=32, intermediate_size=64,
                                                                  num_hidden_layers=1, num_attention_heads=2))
        ASTFeatureExtractor().save_pretrained(path)
    m.save_pretrained(path)
    print(f"{name}: {sum(p.numel() for p in m.parameters()) / 1e9:.3f} B params, saved in {time.time() - t:.0f}s", flush=True)
    del m
    if dev == "cuda":
        torch.cuda.empty_cache()
