#!/usr/bin/python3
"""The peer a user would pick: the same models written the usual PyTorch way,
trained with the same optimizer on the same LibTorch (Debian's python3-torch).
Prints one JSON line: {"impl", "model", "batch", "threads", "images_per_second"}.

usage: train_bench.py --model {mesoinception4|resnet50} --batch N --steps N --threads N
                     [--device cuda] [--precision fp32|bf16|fp16] [--channels-last]
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Inception(nn.Module):
    def __init__(self, cin, a, b, c, d):
        super().__init__()
        self.b1 = nn.Conv2d(cin, a, 1)
        self.b2 = nn.Sequential(nn.Conv2d(cin, b, 1), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(cin, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.ReLU())
        self.b4 = nn.Sequential(nn.Conv2d(cin, d, 1), nn.ReLU(), nn.Conv2d(d, d, 3, padding=3, dilation=3), nn.ReLU())

    def forward(self, x):
        return torch.cat([F.relu(self.b1(x)), self.b2(x), self.b3(x), self.b4(x)], 1)


class MesoInception4(nn.Module):
    def __init__(self):
        super().__init__()
        self.inc1, self.bn1 = Inception(3, 1, 4, 4, 2), nn.BatchNorm2d(11, eps=1e-3, momentum=0.01)
        self.inc2, self.bn2 = Inception(11, 2, 4, 4, 2), nn.BatchNorm2d(12, eps=1e-3, momentum=0.01)
        self.conv3, self.bn3 = nn.Conv2d(12, 16, 5, padding=2), nn.BatchNorm2d(16, eps=1e-3, momentum=0.01)
        self.conv4, self.bn4 = nn.Conv2d(16, 16, 5, padding=2), nn.BatchNorm2d(16, eps=1e-3, momentum=0.01)
        self.fc1, self.fc2 = nn.Linear(1024, 16), nn.Linear(16, 1)

    def forward(self, x):
        x = x / 255.0
        x = F.max_pool2d(self.bn1(self.inc1(x)), 2)
        x = F.max_pool2d(self.bn2(self.inc2(x)), 2)
        x = F.max_pool2d(self.bn3(F.relu(self.conv3(x))), 2)
        x = F.max_pool2d(self.bn4(F.relu(self.conv4(x))), 4)
        x = F.dropout(x.permute(0, 2, 3, 1).flatten(1), 0.5, self.training)
        x = F.dropout(F.leaky_relu(self.fc1(x), 0.1), 0.5, self.training)
        return self.fc2(x).squeeze(1)


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, out, stride, proj):
        super().__init__()
        bn = lambda c: nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)
        self.reduce, self.bn1 = nn.Conv2d(cin, mid, 1, stride, bias=False), bn(mid)
        self.conv, self.bn2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False), bn(mid)
        self.increase, self.bn3 = nn.Conv2d(mid, out, 1, bias=False), bn(out)
        self.proj = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), bn(out)) if proj else None

    def forward(self, x):
        y = F.relu(self.bn1(self.reduce(x)))
        y = F.relu(self.bn2(self.conv(y)))
        y = self.bn3(self.increase(y))
        return F.relu(y + (self.proj(x) if self.proj is not None else x))


class ResNet50VggFace(nn.Module):
    """keras-vggface RESNET50 + Dense(1); first 100 Keras layers' convs frozen."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 64, 7, 2, bias=False), nn.BatchNorm2d(64, eps=1e-3, momentum=0.01)
        blocks, cin = [], 64
        for s, n in enumerate([3, 4, 6, 3]):
            mid = 64 << s
            for b in range(n):
                blocks.append(Bottleneck(cin, mid, mid * 4, 2 if (b == 0 and s > 0) else 1, b == 0))
                cin = mid * 4
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(2048, 1)
        self.register_buffer("mean", torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1))
        frozen = [self.stem] + [m for blk in blocks[:9] for m in (blk.reduce, blk.conv, blk.increase)]
        frozen += [blk.proj[0] for blk in blocks[:9] if blk.proj is not None]
        for m in frozen:
            m.weight.requires_grad_(False)

    def forward(self, x):
        x = x.flip(1) - self.mean
        x = F.relu(self.bn(self.stem(F.pad(x, (2, 3, 2, 3)))))
        x = F.max_pool2d(x, 3, 2)
        x = self.blocks(x)
        x = F.avg_pool2d(x, 7).mean((2, 3))
        return self.head(x).squeeze(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast dtype of the forward pass (torch.autocast); fp16 adds a GradScaler")
    p.add_argument("--channels-last", action="store_true", help="model and input in channels_last")
    a = p.parse_args()
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.model == "mesoinception4":
        model, size, lr, eps = MesoInception4(), 256, 1e-3, 1e-7
    else:
        model, size, lr, eps = ResNet50VggFace(), 224, 1e-5, 1e-9
    model.to(dev)
    mf = torch.channels_last if a.channels_last else torch.contiguous_format
    if a.channels_last:
        model.to(memory_format=mf)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[a.precision]
    scaler = torch.cuda.amp.GradScaler() if a.precision == "fp16" else None
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=lr, eps=eps)
    x = torch.randint(0, 256, (a.batch, size, size, 3), dtype=torch.uint8)  # host batch, copied each step as DFC does
    y = torch.randint(0, 2, (a.batch,)).float().to(dev)
    model.train()

    def step():
        inp = x.to(dev).permute(0, 3, 1, 2).float().contiguous(memory_format=mf)
        opt.zero_grad()
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            logits = model(inp)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        loss.item()  # one sync per step, as DFC's bench

    for _ in range(a.warmup):
        step()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = time.perf_counter() - t
    print(json.dumps({"impl": "python-pytorch", "model": a.model, "batch": a.batch, "threads": a.threads,
                      "device": a.device, "precision": a.precision,
                      "channels_last": a.channels_last, "torch": torch.__version__, "images_per_second": a.batch * a.steps / dt}))


if __name__ == "__main__":
    main()
