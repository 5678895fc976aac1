"""Reference values for tests/learner.rs, computed with fastai 2.8.12 / PyTorch 2.11.0.

Run with the ref venv: "$(bash scripts/ref/make-venv.sh)" scripts/ref/learner_fixture.py
Writes tests/fixtures/learner/{schedules,optim,lr_find,losses}.json.
"""
import json, math, os
import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.schedule import SchedCos, SchedLin, SchedExp, SchedNo, combined_cos, valley, slide, minimum, steep
from fastai.optimizer import Adam, SGD
from fastai.losses import LabelSmoothingCrossEntropyFlat, CrossEntropyLossFlat, BCEWithLogitsLossFlat
from fastai.metrics import accuracy, error_rate, top_k_accuracy, accuracy_multi
from fastcore.basics import even_mults
from sklearn.metrics import f1_score, precision_score, recall_score

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "learner")
os.makedirs(OUT, exist_ok=True)
def dump(name, obj):
    with open(os.path.join(OUT, name), "w") as f: json.dump(obj, f, indent=1)

# ---- schedules
pos = [i / 37 for i in range(38)] + [0.0, 0.25, 0.2500001, 0.3, 0.99, 1.0]
scheds = []
for kind, f in [("cos", SchedCos), ("lin", SchedLin), ("exp", SchedExp), ("no", SchedNo)]:
    s = f(1e-3, 2.5e-2)
    scheds.append({"kind": kind, "start": 1e-3, "end": 2.5e-2, "pos": pos, "values": [float(s(p)) for p in pos]})
combined = []
for pct, a, b, c in [(0.25, 4e-4, 1e-2, 1e-7), (0.3, 0.95, 0.85, 0.95), (0.99, 2e-5, 1e-3, 1e-8)]:
    f = combined_cos(pct, a, b, c)
    combined.append({"pct": pct, "start": a, "middle": b, "end": c, "pos": pos, "values": [float(f(p)) for p in pos]})
# fit_one_cycle's per-batch positions (fastai TrainEvalCallback) and lr/mom per batch
def one_cycle(n_epoch, n_iter, lr_max, div=25., div_final=1e5, pct_start=0.25, moms=(0.95, 0.85, 0.95)):
    lr_max = np.array(lr_max)
    flr = combined_cos(pct_start, lr_max / div, lr_max, lr_max / div_final)
    fmom = combined_cos(pct_start, *moms)
    lrs, ms = [], []
    for epoch in range(n_epoch):
        pct = epoch / n_epoch
        for _ in range(n_iter):
            lrs.append([float(v) for v in flr(pct)]); ms.append(float(fmom(pct)))
            pct += 1. / (n_iter * n_epoch)
    return {"n_epoch": n_epoch, "n_iter": n_iter, "lr_max": [float(v) for v in lr_max], "div": div,
            "div_final": div_final, "pct_start": pct_start, "lrs": lrs, "moms": ms}
cycles = [one_cycle(2, 4, [1e-2]), one_cycle(3, 7, list(even_mults(1e-5, 1e-3, 3)), div=5., pct_start=0.3),
          one_cycle(1, 9, [2e-4, 2e-4, 2e-3], pct_start=0.99)]
evens = [{"start": a, "stop": b, "n": n, "values": [float(v) for v in np.atleast_1d(even_mults(a, b, n))]}
         for a, b, n in [(1e-5, 1e-3, 3), (1e-6, 1e-2, 5), (2e-5, 1e-3, 2), (1e-4, 1e-2, 1)]]
# slices through fastai's Optimizer.set_hyper
ps = [[torch.zeros(1, requires_grad=True)] for _ in range(3)]
opt = Adam(ps, lr=1e-3)
slices = []
for sl in [slice(1e-5, 1e-3), slice(None, 1e-3), slice(None, 2e-3)]:
    opt.set_hyper("lr", sl)
    slices.append({"start": sl.start, "stop": sl.stop, "values": [h["lr"] for h in opt.hypers]})
dump("schedules.json", {"scheds": scheds, "combined": combined, "one_cycle": cycles, "even_mults": evens, "slices": slices})

# ---- optimizers: 3 steps on fixed tensors, per-group hyper-parameters, no wd on the "bias"
g = torch.Generator().manual_seed(0)
w0 = torch.randn(6, generator=g, dtype=torch.float32)
b0 = torch.randn(3, generator=g, dtype=torch.float32)
grads = [(torch.randn(6, generator=g), torch.randn(3, generator=g)) for _ in range(3)]
def run(make):
    w = w0.clone().requires_grad_(True); b = b0.clone().requires_grad_(True)
    opt = make([[w], [b]])
    opt.state[b]["do_wd"] = False
    out = []
    for gw, gb in grads:
        w.grad = gw.clone(); b.grad = gb.clone()
        opt.step()
        out.append({"w": w.detach().tolist(), "b": b.detach().tolist()})
    return out
adam = run(lambda p: (lambda o: (o.set_hyper("lr", [1e-2, 3e-2]), o.set_hyper("mom", 0.85), o)[-1])(Adam(p, lr=1e-2, wd=0.01)))
sgd = run(lambda p: (lambda o: (o.set_hyper("lr", [0.1, 0.05]), o)[-1])(SGD(p, lr=0.1, mom=0.9, wd=0.01)))
dump("optim.json", {"w0": w0.tolist(), "b0": b0.tolist(),
                    "grads": [{"w": a.tolist(), "b": b.tolist()} for a, b in grads],
                    "adam": {"lr": [1e-2, 3e-2], "mom": 0.85, "sqr_mom": 0.99, "eps": 1e-5, "wd": 0.01, "steps": adam},
                    "sgd": {"lr": [0.1, 0.05], "mom": 0.9, "wd": 0.01, "steps": sgd}})

# ---- lr_find suggestions on a recorded (synthetic) curve, through fastai's own slicing
num_it = 100
rng = np.random.default_rng(3)
lrs_full = [1e-7 * (10 / 1e-7) ** (i / num_it) for i in range(num_it)]
x = np.log10(lrs_full)
raw = 2.3 - 1.6 / (1 + np.exp(-(x + 3.2) * 2.2)) + np.exp((x - 0.3) * 2.5) + rng.normal(0, 0.01, num_it)
# smooth like AvgSmoothLoss (float32 lerp, debiased)
val, losses_full = torch.tensor(0.), []
for i, r in enumerate(raw):
    val = torch.lerp(torch.tensor(float(r)), val, 0.98)
    losses_full.append(float(val / (1 - 0.98 ** (i + 1))))
lrs_t, losses_t = torch.tensor(lrs_full[num_it // 10:-5]), torch.tensor(losses_full[num_it // 10:-5])
sugg = {}
for f in (valley, slide, minimum, steep):
    lr, (px, py) = f(lrs_t, losses_t, num_it)
    sugg[f.__name__] = {"lr": float(lr), "point_lr": float(px), "point_loss": float(py)}
dump("lr_find.json", {"num_it": num_it, "lrs": lrs_full, "raw_losses": raw.tolist(), "losses": losses_full, "suggestions": sugg})

# ---- losses and metrics
g = torch.Generator().manual_seed(1)
logits = torch.randn(8, 5, generator=g)
targ = torch.tensor([0, 3, 2, 2, 4, 1, 0, 3])
multi = (torch.rand(8, 5, generator=g) > 0.5).float()
pred = logits.argmax(-1).numpy()
dump("losses.json", {
    "logits": logits.tolist(), "targ": targ.tolist(), "multi_targ": multi.tolist(),
    "cross_entropy": float(CrossEntropyLossFlat()(logits, targ)),
    "label_smoothing": float(LabelSmoothingCrossEntropyFlat()(logits, targ)),
    "bce": float(BCEWithLogitsLossFlat()(logits, multi)),
    "accuracy": float(accuracy(logits, targ)), "error_rate": float(error_rate(logits, targ)),
    "top_3_accuracy": float(top_k_accuracy(logits, targ, k=3)),
    "accuracy_multi": float(accuracy_multi(logits, multi, thresh=0.5)),
    "f1_macro": float(f1_score(targ.numpy(), pred, average="macro")),
    "precision_macro": float(precision_score(targ.numpy(), pred, average="macro", zero_division=0)),
    "recall_macro": float(recall_score(targ.numpy(), pred, average="macro", zero_division=0)),
})
print("wrote", OUT)
