"""Writes tests/fixtures/data/cmyk.jpg: a 16x8 CMYK JPEG (Adobe APP14 marker, as PIL/libjpeg
write it), left half pure red (C=0 M=255 Y=255 K=0), right half pure blue (C=255 M=255 Y=0 K=0).
PIL decodes it back to RGB (255,0,0) / (0,0,255); tests/data.rs checks kestrel does too."""
from pathlib import Path
from PIL import Image

out = Path(__file__).resolve().parents[2] / "tests/fixtures/data/cmyk.jpg"
im = Image.new("CMYK", (16, 8))
for y in range(8):
    for x in range(16):
        im.putpixel((x, y), (0, 255, 255, 0) if x < 8 else (255, 255, 0, 0))
im.save(out, quality=95)
back = Image.open(out)
print(out, back.mode, back.convert("RGB").getpixel((2, 4)), back.convert("RGB").getpixel((13, 4)))
