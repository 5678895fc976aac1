"""Fixture for the MixUp / CutMix / label-smoothing tests (tests/recipe.rs): fastai
2.8.12's own callbacks (`fastai.callback.mixup.MixUp`, `CutMix`) run on a stub learner,
with their random draws recorded (Beta sample, permutation, box centre), and the mixed
inputs and losses they give with `CrossEntropyLossFlat` and
`LabelSmoothingCrossEntropyFlat`.

Usage (in the reference venv of scripts/ref/make-venv.sh):
    python scripts/ref/recipe_fixture.py > tests/fixtures/learner/mixup.json
"""
import json
from types import SimpleNamespace

import torch
from fastai.callback.mixup import MixUp, CutMix
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat

torch.manual_seed(0)
BS, C = 8, 5
x = torch.randn(BS, 2, 4, 6)
y = torch.randint(0, C, (BS,))
logits = torch.randn(BS, C)

rec = {}
_randperm, _randint = torch.randperm, torch.randint


def randperm(n, *a, **k):
    p = _randperm(n, *a, **k)
    rec["perm"] = p.tolist()
    return p


def randint(*a, **k):
    r = _randint(*a, **k)
    rec.setdefault("randint", []).append(int(r.item()))
    return r


torch.randperm, torch.randint = randperm, randint


def run(cb, seed, loss_func):
    learn = SimpleNamespace(x=x.clone(), y=y, xb=(x.clone(),), yb=(y,), loss_func=loss_func, training=True)
    cb.learn = learn
    sample = cb.distrib.sample
    cb.distrib.sample = lambda shape: rec.__setitem__("beta", sample(shape)) or rec["beta"]
    rec.clear()
    cb.before_train()
    torch.manual_seed(seed)
    cb.before_batch()
    loss = cb.lf(logits, y)
    cb.after_train()
    cb.distrib.sample = sample
    return learn, float(loss)


out = {"x": x.tolist(), "y": y.tolist(), "logits": logits.tolist(), "mixup": [], "cutmix": []}
for seed in (1, 2):
    for name, lf in (("ce", CrossEntropyLossFlat()), ("ls", LabelSmoothingCrossEntropyFlat())):
        m = MixUp(0.4)
        learn, loss = run(m, seed, lf)
        out["mixup"].append({"seed": seed, "loss_func": name, "lam": m.lam.tolist(), "perm": rec["perm"],
                             "mixed_x": learn.xb[0].tolist(), "loss": loss})
        c = CutMix(1.0)
        learn, loss = run(c, seed, lf)
        cx, cy = rec["randint"]
        # rand_bbox's box, recovered from the draws exactly as fastai computes it
        lam0 = rec["beta"]
        out["cutmix"].append({"seed": seed, "loss_func": name, "beta": float(lam0), "perm": rec["perm"],
                              "cx": cx, "cy": cy, "lam": float(c.lam), "mixed_x": learn.xb[0].tolist(), "loss": loss})
torch.randperm, torch.randint = _randperm, _randint

# rand_bbox over a grid of lambdas and centres, including edges and exact .5 roundings
c = CutMix(1.0)
c.learn = SimpleNamespace(x=x)
boxes = []
for lam in (0.0, 0.19, 0.5, 0.75, 0.9375, 0.99, 1.0):
    for (W, H, cx, cy) in ((10, 6, 0, 0), (10, 6, 9, 5), (10, 6, 4, 2), (224, 224, 100, 3), (8, 8, 4, 4)):
        torch.randint = lambda lo, hi, shape, _v=iter((cx, cy)): torch.tensor([next(_v)])
        b = c.rand_bbox(W, H, torch.tensor([lam]))
        boxes.append({"w": W, "h": H, "lam": lam, "cx": cx, "cy": cy, "box": [int(v) for v in b]})
torch.randint = _randint
out["rand_bbox"] = boxes
print(json.dumps(out))
