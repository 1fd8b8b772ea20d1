#!/usr/bin/python3
"""Independent reference for the MesoNet models, written from the authors'
classifiers.py in plain NumPy: NHWC tensors, TensorFlow 'same' padding computed
per layer, images loaded the way Keras's load_img does (PIL, convert('RGB'),
NEAREST resize), weights read with h5py. It shares no code with DFC, so a
match between the two is evidence that both implement the Keras model.

usage: keras_reference.py {meso4|mesoinception4} WEIGHTS.h5 IMAGE...
prints PATH<TAB>P(real)<TAB>logit per image, like `dfc predict`.
"""
import re
import sys

import h5py
import numpy as np
from PIL import Image


def load_layers(path):
    f = h5py.File(path, "r")
    g = f["model_weights"] if "layer_names" not in f.attrs else f
    layers = {}
    for name in [n.decode() if isinstance(n, bytes) else n for n in g.attrs["layer_names"]]:
        wn = [w.decode() if isinstance(w, bytes) else w for w in g[name].attrs["weight_names"]]
        if wn:
            layers[name] = {w.split("/")[-1].split(":")[0]: np.array(g[name][w], dtype=np.float64) for w in wn}
    # Keras numbers layers per kind in creation order; sort each kind by number.
    kinds = {}
    for name in layers:
        m = re.match(r"^(.*)_(\d+)$", name)
        kinds.setdefault(m.group(1), []).append((int(m.group(2)), name))
    return {k: [layers[n] for _, n in sorted(v)] for k, v in kinds.items()}


def same_pads(size, k, stride, dilation):
    eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def conv2d(x, w, relu, dilation=1):
    k = w["kernel"]  # HWIO
    kh, kw = k.shape[0], k.shape[1]
    n, h, wd, c = x.shape
    pt, pb = same_pads(h, kh, 1, dilation)
    pl, pr = same_pads(wd, kw, 1, dilation)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    y = np.zeros((n, h, wd, k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            y += xp[:, i * dilation:i * dilation + h, j * dilation:j * dilation + wd, :] @ k[i, j]
    y += w["bias"]
    return np.maximum(y, 0) if relu else y


def batchnorm(x, w):
    return (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + 1e-3) * w["gamma"] + w["beta"]


def maxpool_same(x, k):
    n, h, wd, c = x.shape
    pt, pb = same_pads(h, k, k, 1)
    pl, pr = same_pads(wd, k, k, 1)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-np.inf)
    h2, w2 = xp.shape[1] // k, xp.shape[2] // k
    return xp[:, :h2 * k, :w2 * k, :].reshape(n, h2, k, w2, k, c).max(axis=(2, 4))


def forward(arch, L, x):
    conv, bn, dense = iter(L["conv2d"]), iter(L["batch_normalization"]), iter(L["dense"])
    if arch == "mesoinception4":
        for _ in range(2):
            b1 = conv2d(x, next(conv), True)
            b2 = conv2d(conv2d(x, next(conv), True), next(conv), True)
            b3 = conv2d(conv2d(x, next(conv), True), next(conv), True, dilation=2)
            b4 = conv2d(conv2d(x, next(conv), True), next(conv), True, dilation=3)
            x = maxpool_same(batchnorm(np.concatenate([b1, b2, b3, b4], axis=-1), next(bn)), 2)
    else:
        x = maxpool_same(batchnorm(conv2d(x, next(conv), True), next(bn)), 2)
        x = maxpool_same(batchnorm(conv2d(x, next(conv), True), next(bn)), 2)
    x = maxpool_same(batchnorm(conv2d(x, next(conv), True), next(bn)), 2)
    x = maxpool_same(batchnorm(conv2d(x, next(conv), True), next(bn)), 4)
    y = x.reshape(x.shape[0], -1)  # Keras Flatten over NHWC
    d1, d2 = next(dense), next(dense)
    y = y @ d1["kernel"] + d1["bias"]
    y = np.where(y > 0, y, 0.1 * y)
    return (y @ d2["kernel"] + d2["bias"])[:, 0]


def load_image(path):
    img = Image.open(path)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (256, 256):
        img = img.resize((256, 256), Image.NEAREST)
    return np.asarray(img, dtype=np.float64) / 255.0


def main():
    arch, weights, images = sys.argv[1], sys.argv[2], sys.argv[3:]
    L = load_layers(weights)
    logits = forward(arch, L, np.stack([load_image(p) for p in images]))
    for p, z in zip(images, logits):
        print(f"{p}\t{1 / (1 + np.exp(-z)):.6f}\t{z:.6f}")


if __name__ == "__main__":
    main()
