#!/usr/bin/env python3
"""Convert Ultralytics YOLOv8 detection weights (.pt) to ONNX without torch.

A `.pt` checkpoint is a zip holding `data.pkl` plus one raw file per tensor
storage (`data/<key>`). A restricted unpickler rebuilds just enough of it:
torch / ultralytics module classes become inert stubs that keep their pickled
attributes, tensors become numpy arrays, and every other global is refused, so
nothing from the checkpoint is executed. The layer list (Conv, C2f, SPPF,
Upsample, Concat, Detect) is then emitted with onnx.helper, with BatchNorm
folded into the convolutions and float16 weights widened to float32.

The result has the layout of `yolo export format=onnx` for detection models:
input `images` f32[N,3,640,640] (dynamic batch), output `output0` f32[N,4+nc,A]
whose rows are cx, cy, w, h in input pixels followed by the per-class
probabilities (no objectness, no NMS), and the same metadata keys (names,
stride, imgsz, task, ...), so a model exported by Ultralytics is a drop-in
replacement.

With --verify the model is run with onnxruntime (CPU, one thread) on PNG photos
and the detections are printed; if an expected label is missing the script
exits non-zero. The output file is written (atomically) only when every check
passes.

Licence: the official YOLOv8 weights are published by Ultralytics under
AGPL-3.0 (https://ultralytics.com/license). A converted model is a derivative
of those weights, is covered by the same licence, and says so in its
`license` metadata.

Usage:
    python convert_yolov8.py --pt yolov8n.pt --out yolov8n.onnx \\
        --verify astronaut.png=person --verify chelsea.png=cat

Needs numpy and onnx; onnxruntime only for verification.
"""

import argparse
import collections
import os
import pickle
import struct
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version that came with opset 17; keeps older runtimes happy
DEFAULT_LICENSE = "AGPL-3.0 License (https://ultralytics.com/license)"
CONF_THRESHOLD, IOU_THRESHOLD, EXPECT_CONF = 0.25, 0.45, 0.5


def log(message):
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- checkpoint

STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16", "LongStorage": "<i8", "IntStorage": "<i4",
    "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class Module:
    """Inert stand-in for a pickled torch/ultralytics module: it only keeps the state."""

    def __setstate__(self, state):
        if isinstance(state, tuple):  # (__dict__, __slots__) form
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__.update(state)


def rebuild_tensor(storage, offset, size, stride, *_):
    """torch._utils._rebuild_tensor_v2 for numpy: a strided view of the storage, copied."""
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=[s * storage.itemsize for s in stride])
    return np.array(view)


def rebuild_parameter(data, *_):
    return data


class CheckpointUnpickler(pickle.Unpickler):
    """Unpickler that maps torch/ultralytics globals to inert stand-ins and refuses the rest."""

    def __init__(self, archive, root):
        super().__init__(archive.open(root + "data.pkl"))
        self.archive, self.root, self.storages, self.stubs = archive, root, {}, {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module in ("builtins", "__builtin__") and name == "set":
            return set
        if module == "torch" and name == "Size":
            return tuple
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return rebuild_parameter
        if module.startswith(("ultralytics.", "torch.nn.")):
            key = (module, name)
            if key not in self.stubs:
                self.stubs[key] = type(name, (Module,), {"__module__": module})
            return self.stubs[key]
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or storage_type not in STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        if key not in self.storages:
            raw = self.archive.read(f"{self.root}data/{key}")
            dtype = STORAGE_DTYPES[storage_type]
            if dtype == "bfloat16":  # the top half of a float32
                array = (np.frombuffer(raw, "<u2").astype("<u4") << 16).view("<f4")
            else:
                array = np.frombuffer(raw, dtype)
            self.storages[key] = array[:numel]
        return self.storages[key]


def load_checkpoint(path):
    """Returns the checkpoint dict with numpy tensors and stub modules."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the zip, found {len(pickles)}")
        root = pickles[0][: -len("data.pkl")]
        if root + "byteorder" in archive.namelist() and archive.read(root + "byteorder") != b"little":
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        return CheckpointUnpickler(archive, root).load()


def kind(module):
    return type(module).__name__


def child(module, name, path):
    modules = getattr(module, "_modules", {})
    if modules.get(name) is None:
        raise ValueError(f"{path} ({kind(module)}) has no submodule {name!r}")
    return modules[name]


def tensor(module, name):
    """A parameter or buffer as float64 (None when absent, e.g. a conv without bias)."""
    value = module._parameters.get(name, module._buffers.get(name))
    return None if value is None else value.astype(np.float64)


def pair(value):
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


# ---------------------------------------------------------------- graph

class Graph:
    """Collects ONNX nodes and initializers; names follow the checkpoint's module paths."""

    def __init__(self):
        self.nodes, self.initializers = [], []

    def const(self, name, value, dtype=np.float32):
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type, inputs, name, outputs=1, **attrs):
        outs = [f"{name}_output_{k}" for k in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def conv(self, x, conv, weight, bias, path):
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"{path}: unsupported padding {conv.padding!r}/{conv.padding_mode}")
        ph, pw = pair(conv.padding)
        return self.op("Conv", [x, self.const(f"{path}.weight", weight),
                                self.const(f"{path}.bias", bias)], f"{path}/Conv",
                       kernel_shape=pair(conv.kernel_size), strides=pair(conv.stride),
                       dilations=pair(conv.dilation), pads=[ph, pw, ph, pw], group=int(conv.groups))

    def silu(self, x, path):
        return self.op("Mul", [x, self.op("Sigmoid", [x], f"{path}/Sigmoid")], f"{path}/Mul")


def emit_conv(g, m, x, path):
    """Ultralytics Conv: Conv2d with BatchNorm folded in, then SiLU (or no activation)."""
    conv, bn = child(m, "conv", path), child(m, "bn", path)
    w, b = tensor(conv, "weight"), tensor(conv, "bias")
    scale = tensor(bn, "weight") / np.sqrt(tensor(bn, "running_var") + bn.eps)
    bias = ((0 if b is None else b) - tensor(bn, "running_mean")) * scale + tensor(bn, "bias")
    y = g.conv(x, conv, w * scale[:, None, None, None], bias, f"{path}.conv")
    act = kind(child(m, "act", path))
    if act == "SiLU":
        return g.silu(y, f"{path}.act")
    if act != "Identity":
        raise ValueError(f"{path}: unsupported activation {act}")
    return y


def emit_conv2d(g, m, x, path):
    """A plain nn.Conv2d (the last layer of each Detect branch)."""
    w, b = tensor(m, "weight"), tensor(m, "bias")
    return g.conv(x, m, w, np.zeros(w.shape[0]) if b is None else b, path)


def emit_sequential(g, m, x, path):
    for name, sub in m._modules.items():
        x = emit(g, sub, x, f"{path}.{name}")
    return x


def emit_bottleneck(g, m, x, path):
    y = emit(g, child(m, "cv2", path), emit(g, child(m, "cv1", path), x, f"{path}.cv1"), f"{path}.cv2")
    return g.op("Add", [x, y], f"{path}/Add") if m.add else y


def emit_c2f(g, m, x, path):
    y = emit(g, child(m, "cv1", path), x, f"{path}.cv1")
    parts = g.op("Split", [y, g.const(f"{path}.split", [m.c, m.c], np.int64)], f"{path}/Split",
                 outputs=2, axis=1)
    for name, block in child(m, "m", path)._modules.items():
        parts.append(emit(g, block, parts[-1], f"{path}.m.{name}"))
    y = g.op("Concat", parts, f"{path}/Concat", axis=1)
    return emit(g, child(m, "cv2", path), y, f"{path}.cv2")


def emit_sppf(g, m, x, path):
    pool = child(m, "m", path)
    if pool.ceil_mode or pair(pool.dilation) != [1, 1]:
        raise ValueError(f"{path}: unsupported MaxPool2d settings")
    ph, pw = pair(pool.padding)
    ys = [emit(g, child(m, "cv1", path), x, f"{path}.cv1")]
    for k in range(3):
        ys.append(g.op("MaxPool", [ys[-1]], f"{path}.m/MaxPool_{k}", kernel_shape=pair(pool.kernel_size),
                       strides=pair(pool.stride), pads=[ph, pw, ph, pw]))
    y = g.op("Concat", ys, f"{path}/Concat", axis=1)
    return emit(g, child(m, "cv2", path), y, f"{path}.cv2")


def emit_upsample(g, m, x, path):
    if m.mode != "nearest" or m.size is not None:
        raise ValueError(f"{path}: only nearest upsampling by a scale factor is supported")
    sh, sw = pair(m.scale_factor)
    return g.op("Resize", [x, "", g.const(f"{path}.scales", [1, 1, sh, sw])], f"{path}/Resize",
                mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def emit_concat(g, m, xs, path):
    return g.op("Concat", xs, f"{path}/Concat", axis=int(m.d))


def detect_strides(det):
    strides = [float(s) for s in np.asarray(det.stride, np.float64).ravel()]
    if len(strides) != int(det.nl) or any(s != int(s) for s in strides):
        raise ValueError(f"Detect strides {strides} do not match nl={det.nl}")
    return [int(s) for s in strides]


def emit_detect(g, det, xs, path, imgsz):
    """Detect head plus decoding: DFL box distances -> cx,cy,w,h pixels; sigmoid class scores."""
    nc, reg_max, strides = int(det.nc), int(det.reg_max), detect_strides(det)
    no = 4 * reg_max + nc
    levels = []
    for i, x in enumerate(xs):
        box = emit(g, child(child(det, "cv2", path), str(i), path), x, f"{path}.cv2.{i}")
        cls = emit(g, child(child(det, "cv3", path), str(i), path), x, f"{path}.cv3.{i}")
        y = g.op("Concat", [box, cls], f"{path}/Concat_{i}", axis=1)
        levels.append(g.op("Reshape", [y, g.const(f"{path}.shape_{i}", [0, no, -1], np.int64)],
                           f"{path}/Reshape_{i}"))
    y = g.op("Concat", levels, f"{path}/Concat", axis=2)
    box, cls = g.op("Split", [y, g.const(f"{path}.split", [4 * reg_max, nc], np.int64)],
                    f"{path}/Split", outputs=2, axis=1)

    # DFL: softmax over the reg_max bins of each side, expectation with the bin indices.
    bins = tensor(child(child(det, "dfl", path), "conv", path), "weight").reshape(1, 1, reg_max, 1)
    box = g.op("Reshape", [box, g.const(f"{path}.dfl.shape", [0, 4, reg_max, -1], np.int64)],
               f"{path}.dfl/Reshape")
    box = g.op("Softmax", [box], f"{path}.dfl/Softmax", axis=2)
    box = g.op("Mul", [box, g.const(f"{path}.dfl.bins", bins)], f"{path}.dfl/Mul")
    dist = g.op("ReduceSum", [box, g.const(f"{path}.dfl.axes", [2], np.int64)],
                f"{path}.dfl/ReduceSum", keepdims=0)

    # dist2bbox: anchors at grid cell centres; (left, top, right, bottom) -> (cx, cy, w, h).
    anchors, scale = [], []
    for s in strides:
        if imgsz % s:
            raise ValueError(f"image size {imgsz} is not a multiple of stride {s}")
        n = imgsz // s
        cy, cx = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5, indexing="ij")
        anchors.append(np.stack([cx.ravel(), cy.ravel()]))
        scale.append(np.full(n * n, s))
    anchors, scale = np.concatenate(anchors, 1)[None], np.concatenate(scale)[None, None]
    lt, rb = g.op("Split", [dist, g.const(f"{path}.lt_rb", [2, 2], np.int64)], f"{path}/Split_ltrb",
                  outputs=2, axis=1)
    half = g.op("Mul", [g.op("Sub", [rb, lt], f"{path}/Sub"), g.const(f"{path}.half", 0.5)],
                f"{path}/Mul_half")
    centre = g.op("Add", [half, g.const(f"{path}.anchors", anchors)], f"{path}/Add_anchors")
    size = g.op("Add", [lt, rb], f"{path}/Add_wh")
    xywh = g.op("Concat", [centre, size], f"{path}/Concat_xywh", axis=1)
    xywh = g.op("Mul", [xywh, g.const(f"{path}.strides", scale)], f"{path}/Mul_strides")
    probs = g.op("Sigmoid", [cls], f"{path}/Sigmoid")
    return g.op("Concat", [xywh, probs], f"{path}/Concat_out", outputs=["output0"], axis=1)


LAYERS = {
    "Conv": emit_conv, "Conv2d": emit_conv2d, "Sequential": emit_sequential,
    "Bottleneck": emit_bottleneck, "C2f": emit_c2f, "SPPF": emit_sppf,
    "Upsample": emit_upsample, "Concat": emit_concat,
}


def emit(g, module, x, path):
    if kind(module) not in LAYERS:
        raise ValueError(f"{path}: unsupported layer type {type(module).__module__}.{kind(module)}")
    return LAYERS[kind(module)](g, module, x, path)


def build_model(ckpt, imgsz):
    """Returns (onnx.ModelProto, class names dict) for a YOLOv8 detection checkpoint."""
    model = ckpt.get("ema") or ckpt.get("model")
    if model is None or kind(model) != "DetectionModel":
        raise ValueError(f"checkpoint holds {kind(model)}, expected a DetectionModel")
    layers = list(child(model, "model", "model")._modules.values())
    det = layers[-1]
    if kind(det) != "Detect":
        raise ValueError(f"last layer is {kind(det)}; only plain Detect heads are supported")
    names = model.names if isinstance(model.names, dict) else dict(enumerate(model.names))
    if len(names) != int(det.nc):
        raise ValueError(f"{len(names)} class names but Detect.nc={det.nc}")
    log(f"layers: {len(layers)} ({', '.join(dict.fromkeys(kind(m) for m in layers))}), "
        f"nc={det.nc}, reg_max={det.reg_max}, strides={detect_strides(det)}")

    g, outputs, x = Graph(), [], "images"
    for pos, layer in enumerate(layers):
        if int(layer.i) != pos:
            raise ValueError(f"layer {pos} says it is layer {layer.i}")
        f = layer.f
        inp = (x if f == -1 else outputs[f]) if isinstance(f, int) else \
            [x if j == -1 else outputs[j] for j in f]
        x = emit_detect(g, det, inp, f"model.{pos}", imgsz) if layer is det else \
            emit(g, layer, inp, f"model.{pos}")
        outputs.append(x)
    anchors = sum((imgsz // s) ** 2 for s in detect_strides(det))

    graph = helper.make_graph(
        g.nodes, "main_graph",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + len(names), anchors])],
        g.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   ir_version=IR_VERSION, producer_name="panoptes convert_yolov8")
    yaml_file = (getattr(model, "yaml", None) or {}).get("yaml_file") or getattr(model, "yaml_file", "")
    data = (ckpt.get("train_args") or {}).get("data")
    metadata = {
        "description": f"Ultralytics {Path(yaml_file).stem.replace('yolo', 'YOLO')} model"
                       + (f" trained on {data}" if data else ""),
        "author": "Ultralytics",
        "date": ckpt.get("date", ""),
        "version": ckpt.get("version", ""),
        "license": ckpt.get("license", DEFAULT_LICENSE),
        "docs": ckpt.get("docs", "https://docs.ultralytics.com"),
        "stride": max(detect_strides(det)),
        "task": "detect",
        "batch": 1,
        "imgsz": [imgsz, imgsz],
        "names": names,
    }
    helper.set_model_props(onnx_model, {k: str(v) for k, v in metadata.items()})
    return onnx_model, names


# ---------------------------------------------------------------- verification

PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel


def unfilter_sequential(line, prev, bpp, paeth):
    """PNG Average (3) / Paeth (4) filters: each byte depends on the decoded byte to its left."""
    cur, up = bytearray(line.tobytes()), prev.tobytes()
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        b = up[i]
        if paeth:
            c = up[i - bpp] if i >= bpp else 0
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        else:
            pred = (a + b) >> 1
        cur[i] = (cur[i] + pred) & 0xFF
    return np.frombuffer(bytes(cur), np.uint8)


def read_png(path):
    """Decodes an 8-bit, non-interlaced grey/RGB(A) PNG to an HxWx3 uint8 RGB array."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, chunk = struct.unpack(">I4s", data[pos:pos + 8])
        body, pos = data[pos + 8:pos + 8 + length], pos + 12 + length
        if chunk == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif chunk == b"IDAT":
            idat.append(body)
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in PNG_CHANNELS or interlace:
        raise ValueError(f"{path}: only 8-bit non-interlaced grey/RGB(A) PNGs are supported")
    bpp = PNG_CHANNELS[colour]
    rows = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, width * bpp + 1)
    pixels, prev = np.empty((height, width * bpp), np.uint8), np.zeros(width * bpp, np.uint8)
    for y, (ftype, line) in enumerate(zip(rows[:, 0], rows[:, 1:])):
        if ftype == 0:
            prev = line
        elif ftype == 1:  # Sub: running sum along the row, per channel, modulo 256
            prev = line.reshape(width, bpp).cumsum(0, dtype=np.uint8).ravel()
        elif ftype == 2:  # Up
            prev = line + prev
        elif ftype in (3, 4):
            prev = unfilter_sequential(line, prev, bpp, paeth=ftype == 4)
        else:
            raise ValueError(f"{path}: bad PNG filter type {ftype}")
        pixels[y] = prev
    pixels = pixels.reshape(height, width, bpp)
    return pixels[..., :3] if bpp >= 3 else np.repeat(pixels[..., :1], 3, axis=2)


def resize_bilinear(image, out_w, out_h):
    """Bilinear resize with pixel-centre alignment (like OpenCV's INTER_LINEAR)."""
    def taps(n_out, n_in):
        pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), (pos - lo).astype(np.float32)

    y0, y1, fy = taps(out_h, image.shape[0])
    x0, x1, fx = taps(out_w, image.shape[1])
    src, fx = image.astype(np.float32), fx[None, :, None]
    top = src[y0][:, x0] * (1 - fx) + src[y0][:, x1] * fx
    bottom = src[y1][:, x0] * (1 - fx) + src[y1][:, x1] * fx
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def letterbox(image, size):
    """Scales to fit size x size keeping the aspect ratio, centred on grey (114) padding."""
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    new_w, new_h = round(w * r), round(h * r)
    left, top = round((size - new_w) / 2 - 0.1), round((size - new_h) / 2 - 0.1)
    canvas = np.full((size, size, 3), 114, np.float32)
    canvas[top:top + new_h, left:left + new_w] = resize_bilinear(image, new_w, new_h)
    return (canvas.transpose(2, 0, 1)[None] / 255).astype(np.float32), r, left, top


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression; returns the kept indices, best first."""
    order, keep = scores.argsort()[::-1], []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        order = rest[inter / (area[i] + area[rest] - inter) <= iou_threshold]
    return keep


def detect(session, image, imgsz):
    """Runs the model on one RGB image; returns [(class, conf, [x1, y1, x2, y2])] in its pixels."""
    blob, r, left, top = letterbox(image, imgsz)
    pred = session.run(["output0"], {"images": blob})[0][0].T  # [anchors, 4 + nc]
    cls = pred[:, 4:].argmax(1)
    conf = pred[np.arange(len(pred)), 4 + cls]
    mask = conf >= CONF_THRESHOLD
    xywh, cls, conf = pred[mask, :4], cls[mask], conf[mask]
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    keep = nms(boxes + cls[:, None] * float(imgsz * 4), conf, IOU_THRESHOLD)  # class-wise
    h, w = image.shape[:2]
    boxes = (boxes[keep] - [left, top, left, top]) / r
    boxes = np.clip(boxes, 0, [w, h, w, h])
    return [(int(c), float(p), b.round(1).tolist()) for c, p, b in zip(cls[keep], conf[keep], boxes)]


def verify(model_bytes, checks, names, imgsz):
    """Prints the detections for each (png, label) check; returns the failed checks."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    failed = []
    for png, label in checks:
        image = read_png(png)
        start = time.perf_counter()
        found = detect(session, image, imgsz)
        log(f"{png}: {image.shape[1]}x{image.shape[0]}, {len(found)} detections, "
            f"{(time.perf_counter() - start) * 1000:.0f} ms incl. pre/post-processing")
        print(f"{png}:")
        for c, conf, box in found:
            print(f"  {names[c]:<14} {conf:.3f}  [{', '.join(f'{v:.1f}' for v in box)}]")
        if not any(names[c] == label and conf >= EXPECT_CONF for c, conf, _ in found):
            failed.append(f"{png}: no '{label}' detection with confidence >= {EXPECT_CONF}")
    return failed


# ---------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pt", required=True, type=Path, help="Ultralytics YOLOv8 detection .pt")
    parser.add_argument("--out", required=True, type=Path, help="ONNX file to write")
    parser.add_argument("--imgsz", type=int, default=640, help="square input size (default 640)")
    parser.add_argument("--verify", action="append", default=[], metavar="PNG=LABEL",
                        help="run the model on PNG and require a LABEL detection (repeatable)")
    parser.add_argument("--verify-image", action="append", default=[], metavar="PNG")
    parser.add_argument("--expect", action="append", default=[], metavar="LABEL",
                        help="label required in the matching --verify-image")
    args = parser.parse_args()
    if len(args.verify_image) != len(args.expect):
        parser.error("each --verify-image needs exactly one --expect")
    if any("=" not in v for v in args.verify):
        parser.error("--verify takes PNG=LABEL")
    checks = [tuple(v.rsplit("=", 1)) for v in args.verify] + list(zip(args.verify_image, args.expect))

    start = time.perf_counter()
    log(f"reading {args.pt}")
    ckpt = load_checkpoint(args.pt)
    log(f"checkpoint: ultralytics {ckpt.get('version', '?')}, {ckpt.get('date', 'undated')}, "
        f"license {ckpt.get('license', 'not stated')}")
    model, names = build_model(ckpt, args.imgsz)
    unknown = sorted({label for _, label in checks} - set(names.values()))
    if unknown:
        sys.exit(f"error: unknown label(s) {unknown}; the model knows {sorted(names.values())}")
    onnx.checker.check_model(model, full_check=True)
    model_bytes = model.SerializeToString()
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    log(f"graph: {len(model.graph.node)} nodes, {params / 1e6:.2f} M parameters, "
        f"{len(model_bytes) / 1e6:.1f} MB, checked ({time.perf_counter() - start:.1f} s)")

    failed = verify(model_bytes, checks, names, args.imgsz) if checks else []
    if failed:
        sys.exit("verification failed, nothing written:\n  " + "\n  ".join(failed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(model_bytes)
    os.replace(tmp, args.out)
    log(f"wrote {args.out} ({len(model_bytes) / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
