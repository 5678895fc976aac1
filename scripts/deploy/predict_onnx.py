#!/usr/bin/env python3
"""A third-party client of a kestrel ONNX model: onnxruntime + Pillow + the model's own
metadata, nothing from kestrel.

    python predict_onnx.py MODEL.onnx PHOTO|FOLDER... [--topk 3]

prints one JSON line per photo, as `kestrel predict --json`:
{"file", "label", "index", "top": [{"label", "index", "prob"}]}; for a multi-label model
also "labels" (every label above the model's threshold), "label" being them joined by
spaces, or "none".

Everything it needs is in the .onnx metadata (`metadata_props`): the vocabulary, the
presize and the resize method. The one documented client step ("preprocess" key):
decode to RGB with the EXIF orientation applied, take the centred largest square
(resize_method=crop) or the whole photo (squish), resize it to presize x presize with
Pillow's BILINEAR filter, and feed uint8 (N, 3, presize, presize). The graph does the
rest (the resample to the model's input size, /255 and normalisation).
"""
import argparse
import json
import os
import sys

import numpy as np  # installed with onnxruntime
import onnxruntime as ort
from PIL import Image, ImageOps

EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def image_files(paths):
    """Files as given; folders searched recursively for images, sorted (as kestrel)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for root, dirs, files in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [os.path.join(root, f) for f in files
                          if not f.startswith(".") and os.path.splitext(f)[1].lower() in EXTENSIONS]
            out += sorted(found, key=lambda s: s.encode())
        elif os.path.exists(p):
            out.append(p)
        else:
            sys.exit(f"error: {p} does not exist")
    return out


def presize(path, size, method):
    """Decode with the EXIF orientation, then fastai's Resize(size, method) on validation."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    if method == "crop":
        m = min(w / size, h / size)
        cw, ch = max(int(m * size), 1), max(int(m * size), 1)
        left, top = int(0.5 * (w - cw)), int(0.5 * (h - ch))
        box = (left, top, left + cw, top + ch)
    elif method == "squish":
        box = (0, 0, w, h)
    else:
        raise NotImplementedError(f"resize_method '{method}': this client implements crop and squish")
    im = im.resize((size, size), Image.BILINEAR, box=box)
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--bs", type=int, default=32)
    args = ap.parse_args()
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    vocab = json.loads(meta["vocab"])
    size, method = int(meta["presize"]), meta["resize_method"]
    # A multi-label model (sigmoid probabilities): every label above its threshold, as
    # `kestrel predict` answers.
    output = json.loads(meta["kestrel_meta"]).get("output", {})
    thresh = output.get("thresh", 0.5) if output.get("activation") == "sigmoid" else None
    files = image_files(args.paths)
    for i in range(0, len(files), args.bs):
        chunk = files[i:i + args.bs]
        x = np.stack([presize(f, size, method) for f in chunk])
        probs = sess.run(["probs"], {"image": x})[0]
        for f, p in zip(chunk, probs):
            order = sorted(range(len(p)), key=lambda k: (-p[k], k))[:max(args.topk, 1)]
            top = [{"label": vocab[k], "index": k, "prob": round(float(p[k]), 4)} for k in order]
            line = {"file": f, "label": vocab[order[0]], "index": order[0], "top": top}
            if thresh is not None:
                above = [k for k in range(len(p)) if p[k] > thresh]
                line["label"] = " ".join(vocab[k] for k in above) or "none"
                line["labels"] = [{"label": vocab[k], "index": k, "prob": round(float(p[k]), 4)} for k in above]
            print(json.dumps(line))


if __name__ == "__main__":
    main()
