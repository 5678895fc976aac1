"""Bare PyTorch training step, the baseline of benches/learner.rs.

Usage: python learner_step.py <threads> <batch> <size> <steps> <channels_last 0|1>
Prints one line: `img_per_s <value>`. Model = benches/learner.rs's BenchCnn:
4 × (conv3×3 stride 2 + BatchNorm + ReLU) with 32, 64, 128, 256 channels, global average
pool, linear to 37 classes; AdamW(lr 1e-3, betas (0.9, 0.99), eps 1e-5, wd 0.01); cross-entropy.
"""
import sys, time
import torch
from torch import nn

threads, bs, size, steps, cl = (int(a) for a in sys.argv[1:6])
torch.set_num_threads(threads)
torch.manual_seed(0)
layers, c = [], 3
for o in (32, 64, 128, 256):
    layers += [nn.Conv2d(c, o, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
    c = o
model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 37))
x = torch.randn(bs, 3, size, size)
y = torch.randint(0, 37, (bs,))
if cl:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
lossf = nn.CrossEntropyLoss()
model.train()
def step():
    loss = lossf(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
for _ in range(2): step()
t = time.perf_counter()
for _ in range(steps): step()
print(f"img_per_s {bs * steps / (time.perf_counter() - t)}")
