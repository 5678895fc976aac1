"""PyTorch baseline for benches/models.rs: inference images/s of ResNet-34 (torchvision's
architecture) and EfficientNet-Lite0 (the PyPI reference's architecture, static TF "SAME"
padding, drop connect 0.2 in training as the reference) in eval mode, random weights. Plain torch only (the kestrel venv has no
torchvision). Usage: python models_torch.py THREADS BATCH SIZE ITERS; prints one JSON line
{"resnet34": best seconds per batch, "efficientnet_lite0": ...}."""
import json, math, sys, time
import torch
from torch import nn
import torch.nn.functional as F

threads, batch, size, iters = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(threads)


class Basic(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False); self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False); self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet34(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False); self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True); self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for i, n in enumerate([3, 4, 6, 3]):
            planes = 64 << i
            layers += [Basic(cin if j == 0 else planes, planes, 2 if (j == 0 and i > 0) else 1) for j in range(n)]
            cin = planes
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1); self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.layers(x)), 1))


class SameConv(nn.Conv2d):
    """Conv2dStaticSamePadding of efficientnet-lite-pytorch."""
    def __init__(self, cin, cout, k, stride=1, groups=1, image_size=224):
        super().__init__(cin, cout, k, stride, 0, groups=groups, bias=False)
        o = math.ceil(image_size / stride)
        p = max((o - 1) * stride + k - image_size, 0)
        self.pad = nn.ZeroPad2d((p // 2, p - p // 2, p // 2, p - p // 2)) if p > 0 else nn.Identity()

    def forward(self, x):
        return F.conv2d(self.pad(x), self.weight, None, self.stride, 0, 1, self.groups)


class MBConv(nn.Module):
    def __init__(self, k, s, e, cin, cout, size):
        super().__init__()
        mid = cin * e
        self.expand = e != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1, image_size=size); self._bn0 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
        self._depthwise_conv = SameConv(mid, mid, k, s, mid, size); self._bn1 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
        self._project_conv = SameConv(mid, cout, 1, image_size=math.ceil(size / s)); self._bn2 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        self._swish = nn.ReLU6()
        self.skip = s == 1 and cin == cout
        self.drop_connect = 0.0  # set by Lite0: 0.2 * block index / number of blocks

    def forward(self, inputs):
        x = inputs
        if self.expand:
            x = self._swish(self._bn0(self._expand_conv(x)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if not self.skip:
            return x
        if self.training and self.drop_connect > 0:  # the reference's drop_connect
            keep = 1 - self.drop_connect
            mask = torch.floor(keep + torch.rand([x.shape[0], 1, 1, 1], dtype=x.dtype))
            x = x / keep * mask
        return x + inputs


class Lite0(nn.Module):
    def __init__(self, size):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, image_size=size); self._bn0 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        size = math.ceil(size / 2)
        blocks = []
        for r, k, s, e, i, o in [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                                 (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]:
            for j in range(r):
                blocks.append(MBConv(k, s if j == 0 else 1, e, i if j == 0 else o, o, size))
                if j == 0:
                    size = math.ceil(size / s)
        for idx, b in enumerate(blocks):
            b.drop_connect = 0.2 * idx / len(blocks)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, image_size=size); self._bn1 = nn.BatchNorm2d(1280, eps=1e-3, momentum=0.01)
        self._swish = nn.ReLU6(); self._fc = nn.Linear(1280, 1000)

    def forward(self, x):
        x = self._swish(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = self._swish(self._bn1(self._conv_head(x)))
        return self._fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def bench(model):
    model.eval()
    x = torch.randn(batch, 3, size, size)
    best = float('inf')
    with torch.no_grad():
        for _ in range(2):
            model(x)
        for _ in range(iters):
            t = time.perf_counter(); model(x); best = min(best, time.perf_counter() - t)
    return best


torch.manual_seed(0)
print(json.dumps({'resnet34': bench(ResNet34()), 'efficientnet_lite0': bench(Lite0(size))}))
