#!/usr/bin/python3
"""The reference point for serving: Python PyTorch (Debian's python3-torch, the
same LibTorch) scoring images in a loop the usual way: PIL decode, NEAREST
resize to 256 (as Keras), one forward pass per batch. Prints one JSON line
with images/s and per-image latency percentiles (decode to score).

usage: eval_bench.py --batch N --images N --threads N FILE...
"""
import argparse
import io
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_bench import MesoInception4  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = [open(f, "rb").read() for f in a.files]
    model = MesoInception4().eval()

    def score(batch_bytes):
        x = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((256, 256), Image.NEAREST))
                      for b in batch_bytes])
        with torch.no_grad():
            t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
            return torch.sigmoid(model(t)).tolist()

    for i in range(0, a.warmup, a.batch):
        score([data[(i + j) % len(data)] for j in range(a.batch)])
    lat = []
    start = time.perf_counter()
    for i in range(0, a.images, a.batch):
        t = time.perf_counter()
        score([data[(i + j) % len(data)] for j in range(a.batch)])
        lat += [(time.perf_counter() - t) * 1000] * a.batch
    seconds = time.perf_counter() - start
    lat.sort()
    print(json.dumps({"impl": "python", "batch": a.batch, "threads": a.threads, "images": len(lat),
                      "images_per_second": round(len(lat) / seconds, 1),
                      "p50_ms": round(lat[len(lat) // 2], 1), "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1)}))


if __name__ == "__main__":
    main()
