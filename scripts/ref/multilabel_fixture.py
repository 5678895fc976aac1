"""Reference values of fastai's multi-label path (book chapter 6) for tests/multilabel.rs,
computed with fastai 2.8.12 / PyTorch 2.11.0 / scikit-learn.

Run with the ref venv: "$(bash scripts/ref/make-venv.sh)" scripts/ref/multilabel_fixture.py
Writes tests/fixtures/learner/multilabel.json.
"""
import json, os
import torch
from fastai.data.block import MultiCategoryBlock
from fastai.data.transforms import MultiCategorize, OneHotEncode
from fastai.losses import BCEWithLogitsLossFlat
from fastai.metrics import accuracy_multi, F1ScoreMulti, PrecisionMulti, RecallMulti
from sklearn.metrics import precision_score, recall_score

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "learner")
os.makedirs(OUT, exist_ok=True)

# Targets from label cells (ColReader(label_delim=' ') -> MultiCategorize -> OneHotEncode).
cells = ["dog Abyssinian", "cat", "cat Bengal", "dog", "Bengal cat dog"]
tfm = MultiCategorize()
tfm.setup([c.split(' ') for c in cells])
vocab = list(tfm.vocab)
ohe = OneHotEncode(c=len(vocab))
onehot = [ohe(tfm(c.split(' '))).tolist() for c in cells]

# Metrics at the book's threshold on fixed logits; row 6 has no true label.
g = torch.Generator().manual_seed(15)
logits = torch.randn(7, 4, generator=g) * 2
targ = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]]).float()
def accum(metric):
    metric.reset()
    class L: pass
    learn = L(); learn.pred = logits; learn.yb = (targ,); learn.y = targ; learn.training = False; learn.to_detach = lambda b, cpu=True, gather=True: b.detach()
    metric.accumulate(learn)
    return float(metric.value)
pred = (torch.sigmoid(logits) > 0.2).numpy()
out = {
    "cells": cells, "vocab": vocab, "onehot": onehot,
    "logits": logits.tolist(), "targ": targ.tolist(), "thresh": 0.2,
    "bce": float(BCEWithLogitsLossFlat()(logits, targ)),
    "accuracy_multi": float(accuracy_multi(logits, targ, thresh=0.2)),
    "f1_samples": accum(F1ScoreMulti(thresh=0.2, average='samples')),
    "precision_per_label": precision_score(targ.numpy(), pred, average=None, zero_division=0).tolist(),
    "recall_per_label": recall_score(targ.numpy(), pred, average=None, zero_division=0).tolist(),
}
with open(os.path.join(OUT, "multilabel.json"), "w") as f:
    json.dump(out, f, indent=1)
print(json.dumps({k: v for k, v in out.items() if k not in ("logits", "onehot")}))
