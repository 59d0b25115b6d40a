"""LoRA / projector plumbing and the Hugging Face loading path, on tiny models saved to a temp dir (no network)."""
import pytest
import torch

import common as C
import data.load as L
from data import generate as G
from data.tiny import _build_tokenizer


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """Tiny Qwen2 LLM + word-level tokenizer, CLIP vision model and Whisper encoder, saved as HF folders."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, Qwen2Config, Qwen2ForCausalLM,
                              WhisperConfig, WhisperFeatureExtractor, WhisperModel)
    d = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    tok = _build_tokenizer(G.vocabulary())
    tok.save_pretrained(d / "llm")
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(d / "llm")
    CLIPModel(CLIPConfig(vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=1, num_attention_heads=2),
                         text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2), projection_dim=16)).save_pretrained(d / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d / "clip")
    WhisperModel(WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                               max_source_positions=1500, vocab_size=100, pad_token_id=0,
                               bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)).save_pretrained(d / "whisper")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(d / "whisper")
    return d


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("media"))
    for t in ["image-qa", "audio-cap", "video-qa"]:
        G.write_task(root, t, seed=0, sizes={"train": 2})
    return root


def _model(hf_dir):
    llm, tok = L.load_llm(str(hf_dir / "llm"), "cpu")
    return C.MLLM(llm, tok, {"image": 32, "video": 32, "audio": 32})


def test_hf_encoders_load_and_encode(hf_dir, media):
    enc = L.Encoders(str(hf_dir / "clip"), str(hf_dir / "whisper"), "cpu")
    assert enc.dims == {"image": 32, "video": 32, "audio": 32}
    img = enc("image", [f"{media}/image-qa/media/train_0000.png"])[0]
    vid = enc("video", [f"{media}/video-qa/media/train_0000.mp4"])[0]
    aud = enc("audio", [f"{media}/audio-cap/media/train_0000.wav", f"{media}/audio-cap/media/train_0001.wav"])
    assert img.shape == (L.IMAGE_TOKENS, 32)
    assert vid.shape == (L.VIDEO_GROUPS * L.VIDEO_TOKENS, 32)
    assert len(aud) == 2 and aud[0].shape == (L.AUDIO_TOKENS, 32)
    assert not torch.allclose(aud[0], aud[1])


def test_half_precision_encoder_checkpoint_runs_in_fp32(hf_dir, media, tmp_path):
    """Many hub checkpoints store bf16/fp16 weights; the encoders must still take the processors' fp32 inputs."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel
    ASTModel(ASTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, max_length=64,
                       num_mel_bins=32)).to(torch.bfloat16).save_pretrained(tmp_path / "ast")
    ASTFeatureExtractor(num_mel_bins=32, max_length=64).save_pretrained(tmp_path / "ast")
    enc = L.Encoders(str(hf_dir / "clip"), str(tmp_path / "ast"), "cpu")
    aud = enc("audio", [f"{media}/audio-cap/media/train_0000.wav"])[0]
    assert aud.dtype == torch.float32 and aud.shape == (L.AUDIO_TOKENS, 32) and torch.isfinite(aud).all()


def test_missing_paths_are_user_errors(tmp_path):
    with pytest.raises(C.UserError, match="--llm /no/such/model: path does not exist"):
        L.load_llm("/no/such/model", "cpu")
    with pytest.raises(C.UserError, match="--image-encoder"):
        L.Encoders(str(tmp_path), str(tmp_path), "cpu")


def test_collate_masks_prompt_and_places_media(hf_dir):
    m = _model(hf_dir)
    s = L.Sample("1", "image", "what colour are the shapes?", "red", ["red"], feat=torch.randn(16, 32))
    t = L.Sample("2", "text", "what is one plus one ?", "two", ["two"])
    b = m.collate([s, t])
    assert b.media_mask[0].sum() == 16 and b.media_mask[1].sum() == 0
    # only the target words + </s> are supervised, and they are the last tokens (left padding)
    for i, target in enumerate(["red", "two"]):
        lab = b.labels[i][b.labels[i] != -100].tolist()
        assert m.tok.decode(lab[:-1]).strip() == target and lab[-1] == m.tok.eos_token_id
    assert (b.attention_mask[1] == 0).sum() == b.input_ids.shape[1] - len(m._ids(t)[0] + m._ids(t)[1] + m._ids(t)[2])


def test_token_cache_follows_the_text(hf_dir):
    """A sample relabelled after it was tokenised (MoInCL's pseudo targets) must train on its new target."""
    m = _model(hf_dir)
    s = L.Sample("1", "text", "what is one plus one ?", "two", ["two"])
    m.collate([s], with_target=False)
    s.target = "three"
    lab = m.collate([s]).labels[0]
    assert m.tok.decode(lab[lab != -100][:-1].tolist()).strip() == "three"


def test_lora_zero_init_is_identity_then_trains(hf_dir):
    from types import SimpleNamespace
    m = _model(hf_dir)
    s = [L.Sample("1", "audio", "describe the audio.", "one low pure steady tone", feat=torch.randn(16, 32))]
    b = m.collate(s)
    before = m(b)
    C.add_lora(m, SimpleNamespace(lora_r=4, lora_alpha=8))
    assert torch.allclose(before, m(b), atol=1e-6)              # B = 0 at init -> base model's logits
    lora = [p for n, p in m.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora)
    assert not any(p.requires_grad for n, p in m.llm.named_parameters() if "lora_" not in n)
    opt = torch.optim.SGD(C.trainable(m), lr=0.5)
    C.ce_loss(m(b), b.labels).backward()
    opt.step()
    assert not torch.allclose(before, m(b), atol=1e-4)


def test_train_mode_does_not_depend_on_generate(hf_dir):
    m = _model(hf_dir)                                        # from_pretrained returns the LLM in eval mode
    assert all(mod.training for mod in m.modules())
    m.generate([L.Sample("1", "image", "what shape are they?", "circle", ["circle"], feat=torch.randn(16, 32))],
               max_new_tokens=2)
    assert all(mod.training for mod in m.modules())


def test_generate_returns_strings(hf_dir):
    m = _model(hf_dir)
    s = [L.Sample(str(i), "image", "what shape are they?", "circle", ["circle"], feat=torch.randn(16, 32)) for i in range(3)]
    out = m.generate(s, max_new_tokens=4)
    assert len(out) == 3 and all(isinstance(o, str) for o in out)


def test_pool_tokens_keeps_time_order():
    h = torch.arange(8.0)[:, None, None].expand(8, 65, 4)        # frame index as the feature, CLS + 8x8 grid
    p = L.pool_tokens(h, 4, 9)
    assert p.shape == (36, 4)
    assert p[::9, 0].tolist() == [0.5, 2.5, 4.5, 6.5]            # 4 time groups of 2 frames, in order


def test_checkpoint_round_trip(hf_dir, tmp_path):
    from types import SimpleNamespace
    m = _model(hf_dir)
    C.add_lora(m, SimpleNamespace(lora_r=4, lora_alpha=8))
    with torch.no_grad():
        for p in C.trainable(m):
            p.add_(torch.randn_like(p))
    C.save_checkpoint(str(tmp_path / "ck"), m, extra={"fisher": torch.ones(3)})
    m2 = _model(hf_dir)
    C.add_lora(m2, SimpleNamespace(lora_r=4, lora_alpha=8))
    extra = C.load_checkpoint(str(tmp_path / "ck"), m2)
    assert torch.equal(extra["fisher"], torch.ones(3))
    for (n, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n
    assert (tmp_path / "ck/lora/adapter_model.safetensors").exists()
    assert (tmp_path / "ck/projectors.safetensors").exists()


def test_script_runs_on_hf_models(hf_dir, tmp_path):
    """The real-model path end to end: a method script with --llm / --image-encoder / --audio-encoder folders."""
    import json

    from conftest import run_script
    out = tmp_path / "run"
    r = run_script("moincl.py", out, "--llm", str(hf_dir / "llm"), "--image-encoder", str(hf_dir / "clip"),
                   "--audio-encoder", str(hf_dir / "whisper"), "--train-limit", "4", "--test-limit", "2", "--epochs", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["args"]["llm"] == str(hf_dir / "llm") and len(res["R"]) == 6


def test_logits_only_where_read_give_the_same_losses_and_gradients(hf_dir):
    """MLLM.forward keeps the LM head off the media / prompt positions: CE, the distillation logits (LwF, MoInCL's
    L_KD) and the gradients equal those of the full (B, L, V) logits; the suffix starts at the first position that
    predicts a target."""
    import baselines
    m = _model(hf_dir)
    C.add_lora(m, __import__("types").SimpleNamespace(lora_r=4, lora_alpha=8))
    torch.nn.init.normal_(next(p for n, p in m.named_parameters() if "lora_B" in n))
    torch.manual_seed(0)
    s = [L.Sample("1", "audio", "describe the audio.", "one low pure steady tone", feat=torch.randn(16, 32)),
         L.Sample("2", "image", "what colour is the shape?", "red", feat=torch.randn(16, 32)),
         L.Sample("3", "text", "repeat : cat", "cat")]
    b = m.collate(s)
    full, cut = m(b, keep="all"), m(b)
    L_, first = b.labels.shape[1], int((b.labels[:, 1:] != -100).any(0).nonzero()[0])
    assert full.shape[1] == L_ and cut.shape[1] == L_ - first < L_ - 16       # media and prompt positions dropped
    assert torch.allclose(cut, full[:, first:], atol=1e-5)
    assert torch.allclose(C.ce_loss(cut, b.labels), C.ce_loss(full, b.labels), atol=1e-6)
    assert torch.allclose(C.ce_loss(cut, b.labels, "none"), C.ce_loss(full, b.labels, "none"), atol=1e-6)
    assert torch.allclose(C.target_logits(cut, b.labels), C.target_logits(full, b.labels), atol=1e-5)
    kd = lambda z: baselines.kd_loss(C.target_logits(z, b.labels), C.target_logits(full, b.labels).detach() * 0.5, 2.0)
    grads = []
    for z in (full, m(b)):
        params = [p for p in m.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(C.ce_loss(z, b.labels) + kd(z), params, allow_unused=True, retain_graph=True))
    for g_full, g_cut in zip(*grads):
        assert (g_full is None) == (g_cut is None)
        assert g_full is None or torch.allclose(g_full, g_cut, atol=1e-6)
