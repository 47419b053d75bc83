"""Minimal onnxruntime classifier (the cold-start reference): no MXNet, no capszoo.

``python bench/ort_classify.py MODEL.onnx IMAGE`` prints the class of one
digit image.  Preprocessing is the minimum for MNIST-like files (grayscale,
28x28, light ink on dark background, inverted when the border is light); it
is not capszoo's encoder, only the work a deployment script would do.
"""
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def main(model, image, threads=None):
    img = Image.open(image).convert("L")
    if img.size != (28, 28):
        img = img.resize((28, 28), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    if border.mean() > 0.5:
        x = 1.0 - x
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    probs = sess.run(None, {sess.get_inputs()[0].name: x[None, None]})[0][0]
    print(f"{image}  {int(probs.argmax())}  (p={float(probs.max()):.3f})")


if __name__ == "__main__":
    main(*sys.argv[1:4])
