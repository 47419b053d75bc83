"""Regenerate examples/digits/ from the MNIST test set (CC BY-SA 3.0, LeCun, Cortes, Burges).

    python examples/make_digits.py --data-dir ../shared/data/mnist

Each file shows a different thing the image encoder handles: MNIST's own
light-on-dark 28x28, dark ink on white paper at another size, RGB, RGBA with a
transparent background, a palette GIF, a 16-bit PNG, a JPEG.
"""
import argparse
import os

import numpy as np
from PIL import Image

from capszoo.data import load_mnist

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    args = ap.parse_args()
    images, labels = load_mnist("test", data_dir=args.data_dir)
    first = {int(d): int(np.argmax(labels == d)) for d in range(10)}
    os.makedirs(HERE, exist_ok=True)

    def img(d):
        return images[first[d]]

    Image.fromarray(img(7)).save(os.path.join(HERE, "seven-mnist.png"))
    paper = Image.fromarray(255 - img(2)).resize((140, 140), Image.BICUBIC)
    canvas = Image.new("L", (200, 160), 255)
    canvas.paste(paper, (40, 10))
    canvas.save(os.path.join(HERE, "two-on-paper.jpg"), quality=92)
    rgb = np.stack([255 - img(3)] * 3, axis=-1).astype(np.uint8)
    rgb[..., 2] = np.maximum(rgb[..., 2], 60)  # blue-ish ink on white
    Image.fromarray(rgb).resize((84, 84), Image.BICUBIC).save(os.path.join(HERE, "three-blue-ink.png"))
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = img(4)
    Image.fromarray(rgba, "RGBA").resize((56, 56), Image.BICUBIC).save(os.path.join(HERE, "four-transparent.png"))
    Image.fromarray(img(5)).convert("P").save(os.path.join(HERE, "five-palette.gif"))
    Image.fromarray(img(0).astype(np.uint16) * 257).save(os.path.join(HERE, "zero-16bit.png"))
    Image.fromarray(255 - img(9)).resize((64, 64), Image.LANCZOS).save(os.path.join(HERE, "nine-scan.jpg"), quality=85)
    for f in sorted(os.listdir(HERE)):
        print(f)


if __name__ == "__main__":
    main()
