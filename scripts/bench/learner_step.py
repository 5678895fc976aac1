"""Bare PyTorch training step, the baseline of benches/learner.rs.

Usage: python learner_step.py <arch resnet34|efficientnet_lite0> <threads> <batch> <size>
       <steps> <channels_last 0|1> [bf16 0|1]
Prints one line: `img_per_s <value>`.

Model = fastai's `create_vision_model(arch, 37, pretrained=False)`, as kestrel's
VisionModel: the body of benches/models_torch.py's ResNet34 (torchvision's architecture) or
Lite0 (efficientnet-lite-pytorch's architecture, TF "SAME" padding), then fastai's
`create_head(nf, 37)`: concat pool (max, avg), flatten, BN1d(2nf), dropout 0.25,
Linear(2nf, 512, bias=False), ReLU, BN1d(512), dropout 0.5, Linear(512, 37, bias=False).
Optimizer: AdamW(lr 1e-3, betas (0.9, 0.99), eps 1e-5, wd 0.01; none on BatchNorm and bias
parameters) = fastai's Adam; cross-entropy; `zero_grad()` after the step (set_to_none).
"""
import os, sys, time
import torch
from torch import nn

arch = sys.argv[1]
threads, bs, size, steps, cl = (int(a) for a in sys.argv[2:7])
bf16 = len(sys.argv) > 7 and sys.argv[7] == '1'

# The body classes of the inference benchmark (same file, so the architectures stay equal).
_src = open(os.path.join(os.path.dirname(__file__), '..', '..', 'benches', 'models_torch.py')).read()
_argv, sys.argv = sys.argv, ['models_torch.py', str(threads), str(bs), str(size), '1']
exec(_src.split('\ndef bench(')[0], globals())
sys.argv = _argv
torch.set_num_threads(threads)


class Body(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        n = self.net
        if isinstance(n, ResNet34):
            return n.layers(n.maxpool(n.relu(n.bn1(n.conv1(x)))))
        x = n._swish(n._bn0(n._conv_stem(x)))
        for b in n._blocks:
            x = b(x)
        return n._swish(n._bn1(n._conv_head(x)))


class ConcatPool(nn.Module):
    def forward(self, x):
        return torch.cat([nn.functional.adaptive_max_pool2d(x, 1), nn.functional.adaptive_avg_pool2d(x, 1)], 1)


torch.manual_seed(0)
net, nf = (ResNet34(), 512) if arch == 'resnet34' else (Lite0(size), 1280)
head = nn.Sequential(ConcatPool(), nn.Flatten(), nn.BatchNorm1d(2 * nf), nn.Dropout(0.25),
                     nn.Linear(2 * nf, 512, bias=False), nn.ReLU(inplace=True), nn.BatchNorm1d(512),
                     nn.Dropout(0.5), nn.Linear(512, 37, bias=False))
model = nn.Sequential(Body(net), head)
x = torch.randn(bs, 3, size, size)
y = torch.randint(0, 37, (bs,))
if cl:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
decay, no_decay = [], []
for mod in model.modules():
    for name, p in mod.named_parameters(recurse=False):
        if name.startswith('_fc') or mod is getattr(net, '_fc', None) or mod is getattr(net, 'fc', None):
            continue
        (no_decay if isinstance(mod, nn.modules.batchnorm._BatchNorm) or name == 'bias' else decay).append(p)
opt = torch.optim.AdamW([{'params': decay}, {'params': no_decay, 'weight_decay': 0.0}],
                        lr=1e-3, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
lossf = nn.CrossEntropyLoss()
model.train()


def step():
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    loss = lossf(out.float(), y)
    loss.backward()
    loss.item()
    opt.step()
    opt.zero_grad()


for _ in range(2):
    step()
t = time.perf_counter()
for _ in range(steps):
    step()
print(f"img_per_s {bs * steps / (time.perf_counter() - t)}")
