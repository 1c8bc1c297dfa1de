#!/usr/bin/env python3
"""Python reference for the inference benchmark (benches/infer/).

Runs the same models on the same inputs as Panoptes, with the `onnxruntime` package and the
pre/post-processing a typical Python pipeline uses:

- detect: OpenCV letterbox (cv2.resize + copyMakeBorder, gray 114), NumPy batch blob,
  argmax over the class scores, class-wise NMS with cv2.dnn.NMSBoxesBatched (Ultralytics'
  ONNX examples).
- ocr: the RapidOCR / PaddleOCR pipeline: cv2.resize for the DB detector, cv2.findContours,
  cv2.minAreaRect, mean box score, pyclipper unclip, perspective crops (cv2.warpPerspective),
  the 0/180 classifier, recognition batches sorted by aspect ratio, CTC greedy decoding.
- speech: Silero VAD window by window (silero-vad's OnnxWrapper loop), the same segment rules
  as Panoptes, NumPy log-mel (Whisper's front end), the Whisper encoder and greedy decoding
  with the decoder's KV cache, the Hugging Face `tokenizers` detokenizer.
- embed: `tokenizers` batch encoding (truncation 128, padding to the longest), mean pooling
  over the attention mask and L2 normalisation in NumPy.

Sessions: CPU provider, intra_op_num_threads = threads, inter_op_num_threads = 1,
graph_optimization_level = ORT_ENABLE_ALL; OpenCV gets the same number of threads. Batches are the ones Panoptes uses for the same
batch setting (detect: B; OCR crops: max(B, 8); speech segments: max(B, 8); embed: max(B, 16)).
Silero VAD runs on one thread, as silero-vad's own wrapper and Panoptes run it.

Needs numpy, onnxruntime, opencv-python-headless, pyclipper and tokenizers; `cargo bench
--bench infer` installs the last three into the venv when they are missing.

Usage: infer_reference.py CONFIG.json [--serve]

CONFIG is the JSON file the Rust bench writes (~/.cache/panoptes/bench/infer_reference.json):
models dir, threads, batch, secs, cases, input paths, sentences, thresholds. Without --serve
every case is warmed up, timed for `secs` and one JSON object is printed: per case, items/s
and the outputs (labels, text lines, transcript, embeddings) for a sanity check. With --serve
(how the Rust bench drives it, so both sides can take turns) it reads one JSON command per
line on stdin ({"cmd": "warmup" | "run", "case": ..., "secs": ...}) and answers each with one
JSON line on stdout.
"""

import ast
import json
import math
import os
import sys
import time
import wave

import cv2
import numpy as np
import onnxruntime as ort
import pyclipper
from tokenizers import Tokenizer


def session(cfg, relative, threads=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cfg["threads"]
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(os.path.join(cfg["models"], relative), options,
                                providers=["CPUExecutionProvider"])


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------ detection


class Detect:
    def __init__(self, cfg):
        self.sess = session(cfg, cfg["detector"])
        self.names = ast.literal_eval(self.sess.get_modelmeta().custom_metadata_map["names"])
        self.size = 640
        self.conf = cfg["det_min_confidence"]
        self.iou = cfg["det_nms_iou"]
        self.batch = cfg["batch"]
        photos = [read_rgb(p) for p in cfg["photos"]]
        self.images = [photos[i % len(photos)] for i in range(cfg["batch"])]
        self.distinct = min(len(photos), len(self.images))
        self.items = len(self.images)

    def letterbox(self, img):
        h, w = img.shape[:2]
        r = min(self.size / h, self.size / w)
        nw, nh = min(round(w * r), self.size), min(round(h * r), self.size)
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        left, top = (self.size - nw) // 2, (self.size - nh) // 2
        img = cv2.copyMakeBorder(img, top, self.size - nh - top, left, self.size - nw - left,
                                 cv2.BORDER_CONSTANT, value=(114, 114, 114))
        return img, r, left, top

    def detect(self, images):
        out = []
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            boxed = [self.letterbox(img) for img in chunk]
            blob = np.stack([b[0] for b in boxed]).transpose(0, 3, 1, 2).astype(np.float32)
            blob *= 1.0 / 255.0
            pred = self.sess.run(None, {"images": blob})[0]
            for img, (_, r, left, top), p in zip(chunk, boxed, pred):
                p = p.T  # [anchors, 4 + classes]
                scores = p[:, 4:]
                cls = scores.argmax(1)
                conf = scores[np.arange(len(scores)), cls]
                keep = conf >= self.conf
                xywh, cls, conf = p[keep, :4], cls[keep], conf[keep]
                xywh[:, :2] -= xywh[:, 2:] / 2  # x0, y0, w, h for OpenCV
                idx = cv2.dnn.NMSBoxesBatched(xywh.tolist(), conf.tolist(), cls.tolist(),
                                              self.conf, self.iou) if len(conf) else []
                idx = np.asarray(idx, dtype=np.int64).reshape(-1)
                idx = idx[np.argsort(-conf[idx], kind="stable")]
                h, w = img.shape[:2]
                found = []
                for i in idx:
                    x0, y0, bw, bh = xywh[i]
                    x0, x1 = (x0 - left) / r, (x0 + bw - left) / r
                    y0, y1 = (y0 - top) / r, (y0 + bh - top) / r
                    box = [float(np.clip(x0, 0, w)), float(np.clip(y0, 0, h)),
                           float(np.clip(x1, 0, w)), float(np.clip(y1, 0, h))]
                    found.append((self.names[int(cls[i])], float(conf[i]), box))
                out.append(found)
        return out

    def run(self):
        return self.detect(self.images)

    def output(self, result):
        return [[[label, round(conf, 4)] for label, conf, _ in dets]
                for dets in result[:self.distinct]]


# ------------------------------------------------------------------------------ OCR


class Ocr:
    LIMIT_SIDE, THRESH, BOX_THRESH, UNCLIP, MAX_CANDIDATES = 736, 0.3, 0.5, 1.6, 1000
    REC_H, REC_W, CLS_W, CLS_THRESH = 48, 320, 192, 0.9

    def __init__(self, cfg):
        self.det = session(cfg, "ppocr/det.onnx")
        self.cls = session(cfg, "ppocr/cls.onnx")
        self.rec = session(cfg, "ppocr/rec.onnx")
        chars = self.rec.get_modelmeta().custom_metadata_map["character"].split("\n")
        self.charset = [""] + chars
        classes = self.rec.get_outputs()[0].shape[-1]
        if classes == len(self.charset) + 1:
            self.charset.append(" ")
        self.min_confidence = cfg["ocr_min_confidence"]
        self.batch = max(cfg["batch"], 8)
        frame = cv2.imread(cfg["lobby"], cv2.IMREAD_COLOR)  # BGR, as PaddleOCR reads it
        self.images = [frame] * cfg["batch"]
        self.items = len(self.images)

    @staticmethod
    def normalize(img):
        x = img.astype(np.float32)
        x *= 2.0 / 255.0
        x -= 1.0
        return x.transpose(2, 0, 1)

    # DB post-processing, as RapidOCR's DBPostProcess does it.
    @staticmethod
    def mini_box(contour):
        rect = cv2.minAreaRect(contour)
        pts = sorted(cv2.boxPoints(rect).tolist(), key=lambda p: p[0])
        left = sorted(pts[:2], key=lambda p: p[1])
        right = sorted(pts[2:], key=lambda p: p[1])
        box = np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)
        return box, min(rect[1])

    @staticmethod
    def box_score(prob, box):
        h, w = prob.shape
        xmin = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1))
        xmax = int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
        ymin = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1))
        ymax = int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
        mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
        shifted = box.copy()
        shifted[:, 0] -= xmin
        shifted[:, 1] -= ymin
        cv2.fillPoly(mask, shifted.reshape(1, -1, 2).astype(np.int32), 1)
        return cv2.mean(prob[ymin:ymax + 1, xmin:xmax + 1], mask)[0]

    def unclip(self, box):
        distance = cv2.contourArea(box) * self.UNCLIP / cv2.arcLength(box, True)
        offset = pyclipper.PyclipperOffset()
        offset.AddPath(box.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
        return np.array(offset.Execute(distance), dtype=np.float32).reshape(-1, 1, 2)

    def detect(self, img):
        h, w = img.shape[:2]
        ratio = min(self.LIMIT_SIDE / max(h, w), 1.0)
        dh = max(int(round(h * ratio / 32)), 1) * 32
        dw = max(int(round(w * ratio / 32)), 1) * 32
        x = self.normalize(cv2.resize(img, (dw, dh)))[None]
        prob = self.det.run(None, {"x": x})[0][0, 0]
        bitmap = (prob > self.THRESH).astype(np.uint8) * 255
        contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        boxes = []
        for contour in contours[:self.MAX_CANDIDATES]:
            box, side = self.mini_box(contour)
            if side < 3 or self.box_score(prob, box) < self.BOX_THRESH:
                continue
            grown = self.unclip(box)
            if len(grown) == 0:
                continue
            box, side = self.mini_box(grown)
            if side < 5:
                continue
            box[:, 0] = np.clip(np.round(box[:, 0] * w / dw), 0, w)
            box[:, 1] = np.clip(np.round(box[:, 1] * h / dh), 0, h)
            boxes.append(box)
        boxes.sort(key=lambda b: (b[0][1], b[0][0]))
        return boxes

    @staticmethod
    def crop(img, box):
        width = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
        height = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
        dst = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
        m = cv2.getPerspectiveTransform(box, dst)
        out = cv2.warpPerspective(img, m, (width, height), borderMode=cv2.BORDER_REPLICATE,
                                  flags=cv2.INTER_CUBIC)
        if out.shape[0] / max(out.shape[1], 1) >= 1.5:
            out = np.rot90(out)
        return out

    def resize_norm(self, img, width, max_width):
        h, w = img.shape[:2]
        rw = min(max_width, int(math.ceil(self.REC_H * w / max(h, 1))))
        x = self.normalize(cv2.resize(img, (max(rw, 1), self.REC_H)))
        out = np.zeros((3, self.REC_H, width), dtype=np.float32)
        out[:, :, :x.shape[2]] = x[:, :, :width]
        return out

    def classify(self, crops):
        for start in range(0, len(crops), self.batch):
            chunk = crops[start:start + self.batch]
            x = np.stack([self.resize_norm(c, self.CLS_W, self.CLS_W) for c in chunk])
            probs = self.cls.run(None, {"x": x})[0]
            for k, p in enumerate(probs):
                if p.argmax() == 1 and p[1] >= self.CLS_THRESH:
                    crops[start + k] = cv2.rotate(chunk[k], cv2.ROTATE_180)
        return crops

    def recognize(self, crops):
        ratios = [c.shape[1] / max(c.shape[0], 1) for c in crops]
        order = np.argsort(ratios, kind="stable")
        texts = [None] * len(crops)
        for start in range(0, len(crops), self.batch):
            idx = order[start:start + self.batch]
            max_ratio = max([self.REC_W / self.REC_H] + [ratios[i] for i in idx])
            width = int(math.ceil(self.REC_H * max_ratio))
            x = np.stack([self.resize_norm(crops[i], width, width) for i in idx])
            probs = self.rec.run(None, {"x": x})[0]
            best = probs.argmax(2)
            best_p = probs.max(2)
            for i, ids, ps in zip(idx, best, best_p):
                keep = ids != 0
                keep[1:] &= ids[1:] != ids[:-1]
                text = "".join(self.charset[t] for t in ids[keep])
                texts[i] = (text, float(ps[keep].mean()) if keep.any() else 0.0)
        return texts

    def read(self, images):
        owners, crops = [], []
        for i, img in enumerate(images):
            for box in self.detect(img):
                owners.append(i)
                crops.append(self.crop(img, box))
        crops = self.classify(crops)
        out = [[] for _ in images]
        for i, (text, conf) in zip(owners, self.recognize(crops)):
            text = text.strip()
            if text and conf >= self.min_confidence:
                out[i].append((text, conf))
        return out

    def run(self):
        return self.read(self.images)

    def output(self, result):
        return [[text, round(conf, 4)] for text, conf in result[0]]


# ------------------------------------------------------------------------------ speech

SAMPLE_RATE, N_FFT, HOP, N_MELS, N_FRAMES = 16000, 400, 160, 80, 3000
N_SAMPLES = N_FRAMES * HOP
VAD_WINDOW, VAD_CONTEXT = 512, 64
MIN_SPEECH, MIN_SILENCE = SAMPLE_RATE // 4, SAMPLE_RATE * 3 // 10
SPEECH_PAD, MERGE_GAP = SAMPLE_RATE // 5, SAMPLE_RATE * 4 // 5
MAX_TOKENS, BLANK = 224, 220
# Panoptes' fitted window: the phrase plus 2 s, at least 6 s (its default min_window).
WINDOW_MARGIN, MIN_WINDOW = 2 * SAMPLE_RATE, 6 * SAMPLE_RATE


def window_frames(samples):
    frames = -(-max(samples + WINDOW_MARGIN, MIN_WINDOW) // HOP)
    return min(N_FRAMES, -(-frames // 2) * 2)


def mel_filterbank():
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=80): Slaney scale and norm."""
    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        lin = f / (200.0 / 3)
        log = 15.0 + np.log(np.maximum(f, 1000.0) / 1000.0) / (math.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log, lin)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        lin = m * (200.0 / 3)
        log = 1000.0 * np.exp((math.log(6.4) / 27.0) * (m - 15.0))
        return np.where(m >= 15.0, log, lin)

    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2.0, N_FFT // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2.0), N_MELS + 2))
    ramps = mel_f[:, None] - fft_freqs[None, :]
    widths = np.diff(mel_f)
    weights = np.maximum(0.0, np.minimum(-ramps[:-2] / widths[:-1, None],
                                         ramps[2:] / widths[1:, None]))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


class Speech:
    def __init__(self, cfg):
        # One thread, as silero-vad's own OnnxWrapper (and Panoptes) run it.
        self.vad = session(cfg, "silero-vad/silero_vad.onnx", threads=1)
        # The int8 graphs, as Panoptes runs them on the CPU.
        self.encoder = session(cfg, "whisper-tiny.en/whisper-tiny.en-encoder.int8.onnx")
        self.decoder = session(cfg, "whisper-tiny.en/whisper-tiny.en-decoder.int8.onnx")
        meta = self.decoder.get_modelmeta().custom_metadata_map
        self.sot = int(meta.get("sot", 50257))
        self.eot = int(meta.get("eot", 50256))
        self.no_timestamps = int(meta.get("no_timestamps", 50362))
        layers, _, _, d_model = self.decoder.get_inputs()[1].shape
        self.cache_shape = (layers, d_model)
        self.tokenizer = Tokenizer.from_file(f"{cfg['models']}/whisper-tiny.en/tokenizer.json")
        self.threshold = cfg["vad_threshold"]
        self.batch = max(cfg["batch"], 8)
        self.filters = mel_filterbank()
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)
        with wave.open(cfg["wav"], "rb") as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        self.pcm = pcm.astype(np.float32) / 32768.0
        self.items = 1

    def vad_probs(self, pcm):
        state = np.zeros((2, 1, 128), dtype=np.float32)
        context = np.zeros(VAD_CONTEXT, dtype=np.float32)
        sr = np.array(SAMPLE_RATE, dtype=np.int64)
        probs = []
        for start in range(0, len(pcm), VAD_WINDOW):
            chunk = pcm[start:start + VAD_WINDOW]
            if len(chunk) < VAD_WINDOW:
                chunk = np.pad(chunk, (0, VAD_WINDOW - len(chunk)))
            x = np.concatenate([context, chunk])[None]
            out, state = self.vad.run(None, {"input": x, "state": state, "sr": sr})
            context = chunk[-VAD_CONTEXT:]
            probs.append(float(out[0, 0]))
        return probs

    def segments(self, probs, length):
        neg = max(self.threshold - 0.15, 0.01)
        raw, start, silence = [], None, None
        for i, p in enumerate(probs):
            at = i * VAD_WINDOW
            if start is None:
                if p >= self.threshold:
                    start, silence = at, None
            elif p >= self.threshold:
                silence = None
            elif p < neg:
                if silence is None:
                    silence = at
                if at + VAD_WINDOW - silence >= MIN_SILENCE:
                    raw.append((start, silence))
                    start = None
        if start is not None:
            raw.append((start, length))
        merged = []
        for a, b in raw:
            if b - a < MIN_SPEECH:
                continue
            a, b = max(a - SPEECH_PAD, 0), min(b + SPEECH_PAD, length)
            if merged and a <= merged[-1][1] + MERGE_GAP:
                merged[-1][1] = b
            else:
                merged.append([a, b])
        return [(s, min(s + N_SAMPLES, b)) for a, b in merged for s in range(a, b, N_SAMPLES)]

    def log_mel(self, audio, n_frames=N_FRAMES):
        audio = np.pad(audio[:N_SAMPLES], (0, N_SAMPLES - min(len(audio), N_SAMPLES)))
        padded = np.pad(audio, N_FFT // 2, mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]
        power = np.abs(np.fft.rfft(frames * self.window, axis=-1)) ** 2
        mel = self.filters @ power.T.astype(np.float32)
        log_spec = np.log10(np.maximum(mel, 1e-10))
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        return ((log_spec + 4.0) / 4.0).astype(np.float32)

    def decode(self, cross_k, cross_v, n):
        layers, d_model = self.cache_shape
        self_k = self_v = np.zeros((layers, n, 0, d_model), dtype=np.float32)
        step = np.array([[self.sot, self.no_timestamps]] * n, dtype=np.int64)
        offset = 0
        tokens = [[] for _ in range(n)]
        logprob = np.zeros(n)
        done = np.zeros(n, dtype=bool)
        for i in range(MAX_TOKENS):
            logits, self_k, self_v = self.decoder.run(None, {
                "tokens": step, "self_k": self_k, "self_v": self_v,
                "cross_k": cross_k, "cross_v": cross_v,
                "offset": np.array([offset], dtype=np.int64)})
            allowed = logits[:, :self.eot + 1].copy()
            if i == 0:
                allowed[:, [BLANK, self.eot]] = -np.inf
            best = allowed.argmax(1)
            row_max = logits.max(1)
            lse = row_max + np.log(np.exp(logits - row_max[:, None]).sum(1))
            for b in range(n):
                if done[b]:
                    best[b] = self.eot
                    continue
                logprob[b] += logits[b, best[b]] - lse[b]
                if best[b] == self.eot:
                    done[b] = True
                else:
                    tokens[b].append(int(best[b]))
            offset += step.shape[1]
            if done.all():
                break
            step = best[:, None].astype(np.int64)
        return [(t, math.exp(lp / (len(t) + 1))) for t, lp in zip(tokens, logprob)]

    def transcribe(self, pcm):
        ranges = self.segments(self.vad_probs(pcm), len(pcm))
        out = []
        for start in range(0, len(ranges), self.batch):
            chunk = ranges[start:start + self.batch]
            n_frames = max(window_frames(b - a) for a, b in chunk)
            mel = np.stack([self.log_mel(pcm[a:b], n_frames) for a, b in chunk])
            cross_k, cross_v = self.encoder.run(None, {"mel": mel})
            for (a, b), (ids, conf) in zip(chunk, self.decode(cross_k, cross_v, len(chunk))):
                text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                if text:
                    out.append((a / SAMPLE_RATE, b / SAMPLE_RATE, text, conf))
        return out

    def run(self):
        return self.transcribe(self.pcm)

    def output(self, result):
        return [[round(a, 2), round(b, 2), text] for a, b, text, _ in result]


# ------------------------------------------------------------------------------ embeddings


class Embed:
    def __init__(self, cfg):
        self.sess = session(cfg, "minilm/model.onnx")
        self.tokenizer = Tokenizer.from_file(f"{cfg['models']}/minilm/tokenizer.json")
        self.tokenizer.enable_truncation(128)
        self.tokenizer.enable_padding()
        self.batch = max(cfg["batch"], 16)
        self.texts = cfg["sentences"]
        self.items = len(self.texts)

    def embed(self, texts):
        out = []
        for start in range(0, len(texts), self.batch):
            enc = self.tokenizer.encode_batch(texts[start:start + self.batch])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            types = np.array([e.type_ids for e in enc], dtype=np.int64)
            hidden = self.sess.run(None, {"input_ids": ids, "attention_mask": mask,
                                          "token_type_ids": types})[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out.extend(pooled)
        return out

    def run(self):
        return self.embed(self.texts)

    def output(self, result):
        return [[round(float(v), 6) for v in e] for e in result[:4]]


# ------------------------------------------------------------------------------ driver

CASES = {"detect": Detect, "ocr": Ocr, "speech": Speech, "embed": Embed}


def warmup(case, iterations=2):
    result = None
    for _ in range(iterations):
        result = case.run()
    return {"output": case.output(result)}


def timed(case, secs):
    iters, start = 0, time.perf_counter()
    while True:
        case.run()
        iters += 1
        elapsed = time.perf_counter() - start
        if elapsed >= secs:
            break
    return {"iters": iters, "items": iters * case.items, "secs": elapsed}


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        cfg = json.load(f)
    # OpenCV gets the same thread budget as onnxruntime (it runs between the model runs).
    cv2.setNumThreads(cfg["threads"])
    cases = {name: CASES[name](cfg) for name in cfg["cases"]}
    versions = {"python": sys.version.split()[0], "onnxruntime": ort.__version__,
                "numpy": np.__version__, "opencv": cv2.__version__}
    if "--serve" in sys.argv[2:]:
        print(json.dumps({"ready": True, "versions": versions}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = json.loads(line)
            case = cases[cmd["case"]]
            reply = warmup(case) if cmd["cmd"] == "warmup" else timed(case, cmd["secs"])
            print(json.dumps(reply), flush=True)
        return
    report = {"versions": versions, "threads": cfg["threads"], "batch": cfg["batch"], "cases": {}}
    for name, case in cases.items():
        entry = warmup(case)
        t = timed(case, cfg["secs"])
        entry["items_per_s"] = t["items"] / t["secs"]
        report["cases"][name] = entry
    print(json.dumps(report))


if __name__ == "__main__":
    main()
