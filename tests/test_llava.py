"""--mllm: a LLaVA checkpoint in the transformers format becomes the project's MLLM (its vision tower with its feature
selection, its trained projector, its LLM, its chat template) and gives transformers' own logits. On tiny random
LlavaForConditionalGeneration folders (CLIP vision tower + Llama text model + word-level tokenizer with an <image>
token and a LLaVA-1.5-style chat template) saved to a temp dir; no network."""
import json

import pytest
import torch

import common as C
import data.load as L
from conftest import run_script
from data import generate as G

# llava-hf/llava-1.5-7b-hf's chat template (its chat_template.json): images first, then the text; the assistant turn is
# left open (LLaVA trains "ASSISTANT: answer</s>")
TEMPLATE = ("{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
            "{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', "
            "'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != "
            "'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
            "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', "
            "'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
# (vision_feature_layer, vision_feature_select_strategy): llava-1.5's, and a list of layers with the CLS kept
SELECTS = {"default": (-2, "default"), "full": ([-3, -1], "full")}


def _tokenizer():
    """Word-level tokenizer over the benchmark's words (+ the template's) that adds <s> as Llama's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    words = list(dict.fromkeys(["<pad>", "<unk>", "<s>", "</s>", "<image>"] + G.vocabulary() + ["USER", "ASSISTANT"]))
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", extra_special_tokens=["<image>"])


def save_tiny_llava(d, layer, strategy):
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=3, num_attention_heads=2),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=layer,
        vision_feature_select_strategy=strategy, image_seq_length=16 + (strategy == "full"))
    LlavaForConditionalGeneration(cfg).save_pretrained(d)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                   tokenizer=tok, patch_size=8, vision_feature_select_strategy=strategy, chat_template=TEMPLATE,
                   num_additional_image_tokens=1).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """{strategy: folder of a tiny LLaVA checkpoint with that feature selection}."""
    return {k: save_tiny_llava(tmp_path_factory.mktemp(f"llava_{k}"), *v) for k, v in SELECTS.items()}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("media"))
    G.write_task(root, "dcl-rs", seed=0, sizes={"train": 3, "test": 1})
    G.write_task(root, "video-qa", seed=0, sizes={"train": 2, "test": 1})
    return root


def build(path, media, tmp_path, tasks="dcl-rs"):
    """The MLLM as the scripts build it: flags -> parse_args -> build_model."""
    args = C.parse_args(C.shared_parser("x", "x"), ["--mllm", path, "--tasks", tasks, "--data-root", media,
                                                    "--output-dir", str(tmp_path / "out")])
    model, tasks, _ = C.build_model(args)
    return model, tasks, args


@pytest.mark.parametrize("strategy", sorted(SELECTS))
def test_logits_equal_transformers_llava(llava, media, tmp_path, strategy):
    """Same image and prompt: our MLLM's logits = LlavaForConditionalGeneration's at every text position (prompt and
    target), the same ids (image tokens where the processor puts them), and the same greedy answer."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    model, tasks, _ = build(llava[strategy], media, tmp_path)
    hf = LlavaForConditionalGeneration.from_pretrained(llava[strategy]).eval()
    proc = AutoProcessor.from_pretrained(llava[strategy])
    image_id = hf.config.image_token_id
    model.eval()
    for s in tasks[0].train[:2]:
        prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text":
                                                                        s.instruction}]}], add_generation_prompt=True)
        x = proc(text=prompt + " " + s.target + proc.tokenizer.eos_token, images=L.load_image(s.media),
                 return_tensors="pt")
        b = model.collate([s])
        ids = b.input_ids[0].clone()
        ids[b.media_mask[0]] = image_id
        assert torch.equal(ids, x["input_ids"][0])                 # image tokens where <image> was, as many
        assert int(b.media_mask.sum()) == 16 + (strategy == "full")
        n_tgt = len(proc.tokenizer(" " + s.target, add_special_tokens=False)["input_ids"]) + 1     # + </s>
        assert (b.labels[0] != -100).sum() == n_tgt and b.labels[0, -1] == proc.tokenizer.eos_token_id
        with torch.no_grad():
            ours = model(b, keep="all")[0]
            ref = hf(**x).logits[0]
        text = x["input_ids"][0] != image_id
        assert ours.shape == ref.shape and torch.allclose(ours[text], ref[text], atol=1e-5), \
            (ours[text] - ref[text]).abs().max()
        # greedy generation with the KV cache, from the generation prompt
        xp = proc(text=prompt, images=L.load_image(s.media), return_tensors="pt")
        gen = hf.generate(**xp, max_new_tokens=6, do_sample=False)[0, xp["input_ids"].shape[1]:].tolist()
        gen = gen[:gen.index(hf.config.text_config.eos_token_id)] if hf.config.text_config.eos_token_id in gen else gen
        assert model.generate([s], max_new_tokens=6) == [proc.tokenizer.decode(gen, skip_special_tokens=True).strip()]


def test_parts_are_llavas(llava, media, tmp_path):
    """The image projector is LLaVA's (Linear-GELU-Linear, its trained weights, trainable), video frames take a copy;
    audio keeps the project's Projector; the text-only prompt has no placeholder; the LLM has no trainable weight."""
    from transformers import LlavaForConditionalGeneration
    model, tasks, args = build(llava["default"], media, tmp_path, tasks="dcl-rs,video-qa")
    hf = LlavaForConditionalGeneration.from_pretrained(llava["default"])
    p = hf.model.multi_modal_projector
    for m in ("image", "video"):
        proj = model.projectors[m]
        assert [type(x).__name__ for x in proj] == ["Linear", type(p.act).__name__, "Linear"]
        assert torch.equal(proj[0].weight, p.linear_1.weight) and torch.equal(proj[2].bias, p.linear_2.bias)
        assert all(q.requires_grad for q in proj.parameters())
    assert model.projectors["image"][0].weight is not model.projectors["video"][0].weight
    assert isinstance(model.projectors["audio"], C.Projector)
    assert not any(q.requires_grad for q in model.llm.parameters())
    video = tasks[1].train[0]
    assert video.feat.shape == (L.VIDEO_GROUPS * L.VIDEO_TOKENS, 32)
    head, tail, tgt = model._ids(video)
    assert model.tok.decode(tail).startswith("video :")
    text = L.Sample("t", "text", "what is two plus two ?", "four")
    head, tail, tgt = model._ids(text)
    assert tail == [] and head == model.tok("USER: what is two plus two ? ASSISTANT:")["input_ids"]     # <s> added
    assert tgt == model.tok(" four", add_special_tokens=False)["input_ids"] + [model.tok.eos_token_id]
    assert args.fingerprint["llm"] == args.fingerprint["image_encoder"] == llava["default"]


def test_lora_training_step(llava, media, tmp_path):
    """LoRA on LLaVA's LLM: one CE step is finite and moves the LoRA weights and the projector, nothing else."""
    model, tasks, args = build(llava["default"], media, tmp_path)
    C.add_lora(model, args)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = C.make_optimizer(model, args)
    b = model.collate(tasks[0].train)
    loss = C.ce_loss(model(b), b.labels)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("lora_B" in k for k in moved) and "projectors.image.0.weight" in moved
    assert all("lora_" in k or k.startswith("projectors.") for k in moved)


def test_mr_lora_runs_on_llava(llava, tmp_path):
    out = tmp_path / "run"
    run_script("mr_lora.py", out, "--scenario", "dcl", "--mllm", llava["default"], "--max-steps", "2",
               "--train-limit", "8", "--test-limit", "4")
    res = json.loads((out / "results.json").read_text())
    assert res["args"]["mllm"] == llava["default"] and len(res["R"]) == 5 and len(res["R"][0]) == 5
    assert "router_accuracy" in res["metrics"]


@pytest.fixture(scope="module")
def not_llava(tmp_path_factory):
    """A tiny Llama causal LM: a model folder, but not a LLaVA checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM
    d = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(d)
    return str(d)


def _error(flags, tmp_path):
    import mr_lora
    with pytest.raises(C.UserError) as e:
        C.check_flags(mr_lora.get_args(["--output-dir", str(tmp_path / "o"), *flags]))
    m = str(e.value.code)
    assert m.startswith("error: ") and "\n" not in m, m
    return m


def test_bad_mllm(llava, not_llava, tmp_path):
    m = _error(["--mllm", not_llava], tmp_path)
    assert m == f"error: --mllm {not_llava}: holds a 'llama' model, not {L.MODEL_KINDS['llava']}"
    (tmp_path / "empty").mkdir()
    assert "--mllm" in _error(["--mllm", str(tmp_path / "empty")], tmp_path) and "LLaVA checkpoint" in m
    both = "error: --mllm brings its own LLM and image encoder; give --mllm or --llm / --image-encoder, not both"
    assert _error(["--mllm", llava["default"], "--llm", "tiny"], tmp_path) == both
    assert _error(["--image-encoder", not_llava, "--mllm", llava["default"]], tmp_path) == both
    # the whole script: one line on stderr, exit status 1, nothing written
    r = run_script("mr_lora.py", tmp_path / "o", "--mllm", not_llava, check=False)
    assert r.returncode == 1 and r.stderr.strip() == m and not (tmp_path / "o").exists()
