"""Writes src/models/imagenet_classes.txt: the 1000 ImageNet-1k class names, one per line in
index order, from torchvision's weight metadata. Run with the ref venv python."""
import os
import torchvision

names = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
assert len(names) == 1000
out = os.path.join(os.path.dirname(__file__), '../../src/models/imagenet_classes.txt')
with open(out, 'w') as f:
    f.write('\n'.join(names) + '\n')
print('wrote', out)
