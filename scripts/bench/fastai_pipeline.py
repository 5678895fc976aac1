"""fastai's side of the data-throughput comparison (benches/pipeline.rs).

One training pass through fastai's DataLoader with 2 workers over the training rows of
DATA_DIR/labels.csv (fname, label, is_valid: the pets sample, or Caltech-101): decode +
Resize(460) + aug_transforms(size=224, min_scale=0.75) + Normalize, bs 32, 2 torch
threads. Prints images/s as the last line ("fastai_ips <value>").

Usage: python fastai_pipeline.py DATA_DIR
"""
import sys, time
from pathlib import Path

import torch

from fastai_pets import pets_dls


def main():
    path = Path(sys.argv[1])
    torch.set_num_threads(2)
    dls = pets_dls(path)
    it = iter(dls.train)  # warm-up: start the workers, fill the file cache
    next(it)
    t0, n = time.time(), 0
    for xb, _ in dls.train:
        n += xb.shape[0]
    print(f"fastai_ips {n / (time.time() - t0):.1f}")


if __name__ == "__main__":
    main()
