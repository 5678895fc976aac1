"""Reference values for tests/augment.rs, generated once with PyTorch + fastai.

Run: "$(bash scripts/ref/make-venv.sh)" scripts/ref/augment_fixture.py
Writes tests/fixtures/augment/augment.safetensors (float32 tensors, < 100 kB):
  x                    (8,3,16,16) input on [0, 1]
  theta                (8,2,3) affine matrices
  grid_<mode>_<pad>_<ac>  F.grid_sample(x, F.affine_grid(theta, (8,3,12,12), ac), ...)
  fastai_train_12      fastai aug_transforms pipeline (composed affine + warp + lighting)
                       with fixed draws (see DRAWS), output 12x12
  fastai_train_6       the same at 6x6 (fastai's area pre-shrink in _grid_sample kicks in)
  fastai_valid_12      the same transforms on the validation split (resize only)
  rrc_12               RandomResizedCropGPU(12, min_scale=0.35, ratio=(1,1)) with seed 3;
  rrc_crop             its [top, left, height, width]
"""
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from fastai.vision.augment import (Brightness, Contrast, Dihedral, RandomResizedCropGPU, Rotate, Warp, Zoom,
                                   setup_aug_tfms)
from fastai.torch_core import TensorImage

torch.manual_seed(0)
x = torch.rand(8, 3, 16, 16)
out = {"x": x}

ang = torch.tensor([0., 10., -25., 45., 90., 170., -60., 5.]) * torch.pi / 180
sc = torch.tensor([1., 1.1, 0.8, 1.3, 1., 0.7, 1.05, 2.])
tx = torch.tensor([0., 0.1, -0.2, 0.05, 0., 0.3, -0.4, 0.])
ty = torch.tensor([0., -0.1, 0.15, 0.2, 0., -0.3, 0.1, 0.5])
theta = torch.stack([torch.stack([ang.cos() * sc, ang.sin() * sc, tx], 1),
                     torch.stack([-ang.sin() * sc * 0.9, ang.cos() * sc, ty], 1)], 1)
out["theta"] = theta
for mode, pad, ac in [("bilinear", "reflection", True), ("nearest", "zeros", False),
                      ("bicubic", "border", True), ("bilinear", "zeros", False)]:
    grid = F.affine_grid(theta, (8, 3, 12, 12), align_corners=ac)
    out[f"grid_{mode}_{pad}_{int(ac)}"] = F.grid_sample(x, grid, mode=mode, padding_mode=pad, align_corners=ac)

# Keep in sync with DRAWS in tests/augment.rs.
DRAWS = dict(
    dihedral=[0, 1, 2, 3, 4, 5, 6, 7],
    rotate=[0., 10., -7.5, 30., 5., -20., 90., 3.],
    zoom=[1., 1.1, 1.3, 0.8, 1.05, 1.2, 1., 1.5],
    zoom_col=[0.5, 0.2, 0.9, 0.5, 0.0, 1.0, 0.3, 0.6],
    zoom_row=[0.5, 0.7, 0.1, 0.5, 1.0, 0.4, 0.8, 0.2],
    warp_x=[0., 0.2, -0.1, 0.15, 0., -0.2, 0.05, 0.1],
    warp_y=[0., -0.1, 0.2, 0., 0.18, -0.05, 0.1, -0.2],
    brightness=[0.5, 0.6, 0.4, 0.55, 0.45, 0.5, 0.6, 0.42],
    contrast=[1., 1.2, 0.8, 1.1, 0.9, 1.25, 1., 0.85],
)


def fastai_tfms(size):
    d = DRAWS
    tfms = [Dihedral(p=1., draw=d["dihedral"], size=size),
            Warp(p=1., draw_x=d["warp_x"], draw_y=d["warp_y"], size=size),
            Rotate(p=1., draw=d["rotate"], size=size),
            Zoom(p=1., draw=d["zoom"], draw_x=d["zoom_col"], draw_y=d["zoom_row"], size=size),
            Brightness(p=1., draw=d["brightness"]), Contrast(p=1., draw=d["contrast"])]
    return setup_aug_tfms(tfms)


def run(tfms, split_idx):
    y = TensorImage(x.clone())
    for t in tfms:
        y = t(y, split_idx=split_idx)
    return torch.Tensor(y).as_subclass(torch.Tensor)


out["fastai_train_12"] = run(fastai_tfms(12), 0)
out["fastai_train_6"] = run(fastai_tfms(6), 0)
out["fastai_valid_12"] = run(fastai_tfms(12)[:1], 1)

random.seed(3)
rrc = RandomResizedCropGPU(12, min_scale=0.35, ratio=(1, 1))
out["rrc_12"] = torch.Tensor(rrc(TensorImage(x.clone()), split_idx=0)).as_subclass(torch.Tensor)
out["rrc_crop"] = torch.tensor([rrc.tl[0], rrc.tl[1], rrc.cp_size[0], rrc.cp_size[1]], dtype=torch.float32)

dst = Path(__file__).resolve().parents[2] / "tests/fixtures/augment/augment.safetensors"
save_file({k: v.contiguous().float() for k, v in out.items()}, str(dst))
print("wrote", dst, {k: tuple(v.shape) for k, v in out.items()}, "crop", out["rrc_crop"].tolist())
