"""Numpy references of the mask measures (tests of mask_ops, the mask matcher and the mask criterion)."""
import numpy as np


def np_point_sample(img, points):
    """[h, w] image at [p, 2] points (x, y in [0, 1] over the image): bilinear between pixel centres, zeros
    outside, one point at a time."""
    h, w = img.shape
    out = []
    for x, y in points:
        # pixel centre j sits at (j + 0.5) / w
        fx, fy = x * w - 0.5, y * h - 0.5
        x0, y0 = int(np.floor(fx)), int(np.floor(fy))
        v = 0.
        for yy, wy in ((y0, 1 - (fy - y0)), (y0 + 1, fy - y0)):
            for xx, wx in ((x0, 1 - (fx - x0)), (x0 + 1, fx - x0)):
                if 0 <= yy < h and 0 <= xx < w:
                    v += wy * wx * img[yy, xx]
        out.append(v)
    return np.array(out)


def np_bce(x, t):
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))
