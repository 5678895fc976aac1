"""Baseline for benches/interpret.rs: batch prediction over a folder of photos with the
reference EfficientNet-Lite0 (efficientnet-lite-pytorch) body + fastai's head for 37
classes, the same validation preprocessing as kestrel (decode, Resize(460) centre crop
with PIL bilinear, bilinear resize to 224, (x - 127/255) / (128/255)), batch 64, torch with
`threads` threads and a DataLoader with `threads` decoding workers. Prints one JSON line.
  python scripts/ref/interpret_bench.py IMAGES_DIR [threads] [limit]
"""
import json, os, sys, time
import torch, torch.nn.functional as F
from PIL import Image, ImageOps
from efficientnet_lite_pytorch import EfficientNet
from fastai.vision.learner import create_head

folder = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.set_num_threads(threads)
limit = int(sys.argv[3]) if len(sys.argv) > 3 else None
files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png")))[:limit]


class Photos(torch.utils.data.Dataset):
    def __len__(self):
        return len(files)

    def __getitem__(self, i):
        img = ImageOps.exif_transpose(Image.open(files[i])).convert("RGB")
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((460, 460), Image.BILINEAR)
        return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(460, 460, 3).permute(2, 0, 1)


class Lite0Learner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = EfficientNet.from_name("efficientnet-lite0")
        self.head = create_head(1280, 37)

    def forward(self, x):
        return self.head(self.body.extract_features(x))


model = Lite0Learner().eval()
dl = torch.utils.data.DataLoader(Photos(), batch_size=64, num_workers=threads)


def run():
    n = 0
    with torch.inference_mode():
        for x in dl:
            x = F.interpolate(x.float() / 255.0, size=(224, 224), mode="bilinear", align_corners=True)
            x = (x - 127 / 255) / (128 / 255)
            model(x).softmax(-1)
            n += x.shape[0]
    return n


run()  # warm-up pass (worker start, allocator)
t = time.perf_counter()
n = run()
dt = time.perf_counter() - t
print(json.dumps({"images": n, "seconds": dt, "images_per_s": n / dt, "threads": threads}))
