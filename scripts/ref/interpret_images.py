"""Writes tests/fixtures/interpret/cmyk.jpg: a small CMYK JPEG (Adobe APP14 marker), which
no Rust crate in kestrel's dependencies can encode, for the predict colour-mode test.
  "$(bash scripts/ref/make-venv.sh)" scripts/ref/interpret_images.py
"""
from PIL import Image

img = Image.new("RGB", (48, 32))
for y in range(32):
    for x in range(48):
        img.putpixel((x, y), (x * 5, y * 7, 200 - x * 2))
img.convert("CMYK").save("tests/fixtures/interpret/cmyk.jpg", quality=95)
