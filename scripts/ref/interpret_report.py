"""Reference for tests/interpret.rs: scikit-learn's classification_report (what fastai's
ClassificationInterpretation.print_classification_report prints) and fastai's
most_confused on a small hand-made case. Run with the reference venv:
  "$(bash scripts/ref/make-venv.sh)" scripts/ref/interpret_report.py > tests/fixtures/interpret/report.json
"""
import json, warnings
import numpy as np
from operator import itemgetter
from sklearn.metrics import classification_report, precision_recall_fscore_support

warnings.simplefilter("ignore")
vocab = ["Abyssinian", "Bengal", "beagle", "yorkshire_terrier"]  # kestrel CategoryMap order
targets = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
decoded = [0, 1, 0, 1, 2, 2, 2, 0, 2, 2]
labels = list(range(len(vocab)))
text = classification_report(targets, decoded, labels=labels, target_names=vocab)
p, r, f, s = precision_recall_fscore_support(targets, decoded, labels=labels, zero_division=0)
cm = np.zeros((4, 4), dtype=int)
for t, d in zip(targets, decoded):
    cm[t, d] += 1
np.fill_diagonal(cm, 0)  # fastai most_confused
mc = sorted([(vocab[i], vocab[j], int(cm[i, j])) for i, j in zip(*np.where(cm >= 1))], key=itemgetter(2), reverse=True)
print(json.dumps({
    "vocab": vocab, "targets": targets, "decoded": decoded, "text": text,
    "precision": p.tolist(), "recall": r.tolist(), "f1": f.tolist(), "support": s.tolist(),
    "most_confused": mc,
}, indent=1))
