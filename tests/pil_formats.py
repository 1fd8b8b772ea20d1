#!/usr/bin/python3
"""Writes one small image per format and mode Pillow can save (PNG in RGB,
RGBA, P, L, LA, 1 and 16-bit L; BMP in RGB, P, L, 1; PPM; PGM; JPEG in RGB, L
and CMYK, and progressive) into DIR, each with DIR/NAME.raw holding Pillow's convert("RGB") pixels --
what Keras feeds the model. tests/image_codec_test.cc decodes them with DFC.

usage: pil_formats.py DIR
"""
import os
import sys

import numpy as np
from PIL import Image

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(1)
rgb = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
gray = Image.fromarray(np.tile(np.arange(53, dtype=np.uint8) * 4, (37, 1)))
gray16 = Image.fromarray(np.tile(np.arange(53, dtype=np.uint16) * 1000, (37, 1)))
cases = {
    "rgb.png": rgb, "rgba.png": rgb.convert("RGBA"), "palette.png": rgb.convert("P"), "gray.png": gray,
    "gray-alpha.png": gray.convert("LA"), "bilevel.png": gray.convert("1"), "gray16.png": gray16,
    "rgb.bmp": rgb, "palette.bmp": rgb.convert("P"), "gray.bmp": gray, "bilevel.bmp": gray.convert("1"),
    "rgb.ppm": rgb, "gray.pgm": gray, "rgb.jpg": rgb, "gray.jpg": gray,
    # Print workflows write CMYK JPEGs (Adobe's inverted convention, as Pillow
    # writes and reads them); web images are often progressive.
    "cmyk.jpg": rgb.convert("CMYK"), "progressive.jpg": rgb,
}
options = {"progressive.jpg": {"progressive": True}}
for name, im in cases.items():
    path = os.path.join(out, name)
    im.save(path, **options.get(name, {}))
    with open(path + ".raw", "wb") as f:
        f.write(np.asarray(Image.open(path).convert("RGB")).tobytes())
