"""DenseMosaic (DEIM's dense one-to-one matching): each output box is its input box moved with its tile.

The tiles are found from the canvas pixels (every input image is one flat colour), so the expected boxes
come from what was drawn, not from the transform's own offsets.
"""
import os
import random

import numpy as np
import pytest

from conftest import ROOT, fresh_config
from ppdet_rtdetr.data.mosaic import DenseMosaic

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def _sample(i, h, w, boxes):
    boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    n = len(boxes)
    return {'image': np.full((h, w, 3), COLOURS[i], dtype=np.uint8), 'im_id': np.array([i]),
            'h': float(h), 'w': float(w), 'im_shape': np.array([h, w], np.float32),
            'scale_factor': np.array([1., 1.], np.float32), 'gt_bbox': boxes,
            # classes 10 * i + j: each output box says which sample and which box it came from
            'gt_class': (10 * i + np.arange(n, dtype=np.int32)).reshape(-1, 1),
            'is_crowd': np.full((n, 1), i % 2, dtype=np.int32)}


SAMPLES = [
    (0, 120, 90, [[10, 20, 50, 60], [0, 0, 90, 120]]),
    (1, 100, 160, [[30.5, 40.25, 100, 90]]),
    (2, 64, 64, []),
    (3, 150, 110, [[1, 2, 3, 4], [50, 60, 109, 149], [20, 20, 80, 40]]),
    (4, 90, 130, [[5, 5, 125, 85]]),
]


def _tile_rect(canvas, colour):
    """(x0, y0, w, h) of the pixels of `colour` on the canvas."""
    ys, xs = np.nonzero((canvas == np.array(colour, np.uint8)).all(-1))
    return xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()


@pytest.mark.parametrize('tile_size', [None, 40])
def test_boxes_follow_their_tiles(tile_size):
    random.seed(3)
    op = DenseMosaic(prob=1.0, tile_size=tile_size, max_cached=50)
    inputs = [_sample(*s) for s in SAMPLES]
    outs = [op(dict(s)) for s in inputs]
    # fewer than 4 samples cached: passed through untouched
    for s, o in zip(inputs[:3], outs[:3]):
        assert o is not None and o['image'] is s['image'] and o['gt_bbox'] is s['gt_bbox']
    for out, own in zip(outs[3:], inputs[3:]):
        canvas = out['image']
        H, W = canvas.shape[:2]
        assert out['im_shape'].tolist() == [H, W] and (out['h'], out['w']) == (H, W)
        assert out['im_id'].tolist() == own['im_id'].tolist()
        # the sample's own boxes come first
        n_own = len(own['gt_bbox'])
        np.testing.assert_array_equal(out['gt_class'][:n_own], own['gt_class'])
        boxes, classes, crowd = out['gt_bbox'], out['gt_class'][:, 0], out['is_crowd'][:, 0]
        assert len(boxes) == len(classes) == len(crowd)
        # inside the canvas
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all(), boxes
        seen = set()
        for i in sorted(set(int(c) // 10 for c in classes)):
            src = inputs[i]
            h, w = src['image'].shape[:2]
            x0, y0, tw, th = _tile_rect(canvas, COLOURS[i])
            sx, sy = tw / w, th / h
            if tile_size is None:
                assert (sx, sy) == (1, 1)
            else:
                assert min(tw, th) == tile_size
            rows = np.nonzero(classes // 10 == i)[0]
            # every box of sample i, in order, with its class and crowd flag kept
            np.testing.assert_array_equal(classes[rows], src['gt_class'][:, 0])
            np.testing.assert_array_equal(crowd[rows], src['is_crowd'][:, 0])
            want = src['gt_bbox'] * np.array([sx, sy, sx, sy]) + np.array([x0, y0, x0, y0])
            np.testing.assert_allclose(boxes[rows], want, rtol=0, atol=1e-3)
            area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
            np.testing.assert_allclose(area(boxes[rows]), area(src['gt_bbox']) * sx * sy, rtol=1e-5)
            seen.add(i)
        assert int(own['im_id'][0]) in seen or n_own == 0
        # four tiles on the canvas (box-less ones too), each touching the centre
        tiles = [c for c in COLOURS if (canvas == np.array(c, np.uint8)).all(-1).any()]
        assert len(tiles) == 4
        for c in tiles:
            x0, y0, tw, th = _tile_rect(canvas, c)
            assert x0 + tw == W // 2 or x0 == W // 2
            assert y0 + th == H // 2 or y0 == H // 2


def test_probability_zero_never_mosaics_and_the_cache_is_bounded():
    random.seed(0)
    op = DenseMosaic(prob=0.0, max_cached=4)
    for k in range(7):
        s = _sample(*SAMPLES[k % len(SAMPLES)])
        assert op(s) is s
    assert len(op.cache) == 4


def test_bad_options_and_unsupported_fields_are_refused():
    with pytest.raises(ValueError, match=r'DenseMosaic prob must be in \[0, 1\], got 1.5'):
        DenseMosaic(prob=1.5)
    with pytest.raises(ValueError, match=r"DenseMosaic tile_size must be None or an int >= 8 \(pixels\), got 4"):
        DenseMosaic(tile_size=4)
    with pytest.raises(ValueError, match='DenseMosaic max_cached must be at least 4'):
        DenseMosaic(max_cached=3)
    s = _sample(*SAMPLES[0])
    s['gt_poly'] = [[[0, 0, 1, 1, 2, 2]]]
    with pytest.raises(ValueError, match="DenseMosaic: samples with 'gt_poly' are not supported"):
        DenseMosaic()(s)


def test_small_data_config_stops_the_mosaics_at_the_stop_epoch():
    from ppdet.core.workspace import create
    cfg = fresh_config(os.path.join(ROOT, 'configs', 'small_data', 'rtdetr_r18vd_small_data.yml'))
    reader = create('RTDETRTrainReader')
    plain = ['Decode', 'RandomDistort', 'RandomFlip', 'BatchRandomResize', 'NormalizeImage', 'NormalizeBox',
             'BboxXYXY2XYWH', 'Permute']
    assert reader.transform_names(reader.stop_epoch - 1) == plain[:1] + ['DenseMosaic'] + plain[1:]
    assert reader.transform_names(reader.stop_epoch) == plain
    assert reader.stop_epoch < cfg.epoch
