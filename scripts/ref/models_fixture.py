"""Fixture for tests/models.rs: reference logits of torchvision ResNet-18/50 and of the PyPI
`efficientnet-lite-pytorch` EfficientNet-Lite0, plus fastai's head/param-group numbers.

Weights and inputs are not stored: both sides fill them from the same formula (`fill`,
`inputs` below; Rust: tests/models.rs), so the fixture stays small. Run with the ref venv:
    "$(bash scripts/ref/make-venv.sh)" scripts/ref/models_fixture.py
"""
import json, math, os
import torch, torchvision
from efficientnet_lite_pytorch import EfficientNet
from fastai.vision.all import create_vision_model, resnet34, resnet50
from fastai.vision.learner import _resnet_split

torch.set_num_threads(2)
OUT = os.path.join(os.path.dirname(__file__), '../../tests/fixtures/models/models.json')


def name_hash(name):
    h = 0
    for b in name.encode():
        h = (h * 31 + b) % 1000003
    return h


def fill(name, shape):
    """Deterministic 'random' tensor for state-dict entry `name` (float64 maths, f32 result)."""
    h = name_hash(name)
    freq = 0.1 + (h % 997) / 997.0
    phase = (h % 101) / 101.0 * 6.0
    n = math.prod(shape)
    v = torch.sin(torch.arange(n, dtype=torch.float64) * freq + phase).reshape(shape)
    leaf = name.rsplit('.', 1)[-1]
    if len(shape) >= 2:
        fan_in = n // shape[0]
        v = v * (2.0 / math.sqrt(fan_in))
    elif leaf == 'running_var':
        v = 1.0 + 0.5 * v
    elif leaf == 'weight':
        v = 1.0 + 0.2 * v
    else:  # bias, running_mean
        v = 0.1 * v
    return v.float()


def inputs(n, size):
    """Deterministic input batch (n, 3, size, size) in about [-2, 2]."""
    k = n * 3 * size * size
    idx = torch.arange(k, dtype=torch.float64)
    return (2.0 * torch.sin(idx * 0.013) * torch.cos(idx * 0.0007)).float().reshape(n, 3, size, size)


def filled(model):
    sd = {k: (v if k.endswith('num_batches_tracked') else fill(k, tuple(v.shape))) for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    return model.eval()


SIZES = [224, 97]
out = {'sizes': SIZES, 'batch': 2, 'logits': {}}
with torch.no_grad():
    for name, ctor in [('resnet18', torchvision.models.resnet18), ('resnet50', torchvision.models.resnet50)]:
        m = filled(ctor())
        out['logits'][name] = {str(s): m(inputs(2, s)).flatten().tolist() for s in SIZES}
    # image_size=None: TF "SAME" padding computed from the actual input (Conv2dDynamicSamePadding).
    lite = filled(EfficientNet.from_name('efficientnet-lite0', image_size=None))
    static = filled(EfficientNet.from_name('efficientnet-lite0'))
    x = inputs(2, 224)
    assert torch.allclose(lite(x), static(x), atol=1e-5), 'static and dynamic SAME padding differ at 224'
    out['logits']['efficientnet_lite0'] = {str(s): lite(inputs(2, s)).flatten().tolist() for s in SIZES}
    out['lite_param_names'] = list(lite.state_dict().keys())

# fastai: create_vision_model(resnet34/50, 37, pretrained=False), _resnet_split groups.
out['fastai'] = {}
for name, arch in [('resnet34', resnet34), ('resnet50', resnet50)]:
    m = create_vision_model(arch, 37, pretrained=False)
    names = {id(p): n for n, p in m.named_parameters()}
    groups = _resnet_split(m)
    bn_ids = {id(p) for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for p in mod.parameters()}
    out['fastai'][name] = {
        'groups': [{'tensors': len(g), 'numel': sum(p.numel() for p in g),
                    'first': names[id(g[0])], 'last': names[id(g[-1])]} for g in groups],
        'n_bn': len(bn_ids),
        'n_bias': sum(1 for n, _ in m.named_parameters() if n.endswith('bias')),
        'head': [[n, list(v.shape)] for n, v in m[1].state_dict().items() if not n.endswith('num_batches_tracked')],
        'state_dict': [[n, list(v.shape)] for n, v in m.state_dict().items() if not n.endswith('num_batches_tracked')],
    }

with open(OUT, 'w') as f:
    json.dump(out, f)
print('wrote', OUT, os.path.getsize(OUT), 'bytes')
