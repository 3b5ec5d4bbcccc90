"""The deploy scripts on a Mask-RT-DETR export: results.json masks (COCO RLE) decode to dygraph's masks.

The fixed-size export of tests/export/test_mask_engines.py runs on three image files of different sizes in one
batch; dygraph's reference is each file through ppdet's own TestReader. Paddle Inference writes pycocotools'
compressed RLE, onnxruntime (with pycocotools hidden) the uncompressed runs the deploy code computes itself; both
are decoded here by code that does not share the encoder's.
"""
import json
import os
import sys

import cv2
import numpy as np
import pytest

from helpers.export_utils import (ExportCase, assert_same_masks, load_deploy_module, match_detections,  # noqa: F401
                                  ort_infer, paddle_infer)


@pytest.fixture(scope='module')
def case():
    return ExportCase('mask_fixed')


def _decode_runs(rle):
    """An uncompressed COCO RLE -> uint8 [h, w]: alternating runs of 0 and 1, column-major."""
    h, w = rle['size']
    values = np.concatenate([np.full(n, i % 2, np.uint8) for i, n in enumerate(rle['counts'])])
    assert values.size == h * w, f'runs cover {values.size} pixels, the mask has {h * w}'
    return values.reshape(w, h).T


def _decode(rle):
    if isinstance(rle['counts'], list):
        return _decode_runs(rle)
    from pycocotools import mask as mask_util
    return mask_util.decode({'size': rle['size'], 'counts': rle['counts'].encode('ascii')})


def _check_results(case, output_dir, compressed):
    with open(os.path.join(output_dir, 'results.json')) as f:
        results = json.load(f)
    assert len(results) == 3
    for item in results:
        name = os.path.splitext(os.path.basename(item['image']))[0]
        h, w = cv2.imread(item['image']).shape[:2]
        dets = item['detections']
        assert all(isinstance(d['segmentation']['counts'], str) == compressed for d in dets)
        got_bbox = np.array([[d['class_id'], d['score']] + d['bbox'] for d in dets], 'float32')
        got_mask = np.stack([_decode(d['segmentation']) for d in dets])
        want_bbox, want_mask = case.ref[f'file_{name}'], case.ref[f'mask_file_{name}']
        assert want_mask.shape[1:] == (h, w)
        order, _ = match_detections(got_bbox, want_bbox, what=f'results.json {name}')
        assert_same_masks(got_mask[order], want_mask, what=f'results.json {name}')


def test_paddle_deploy_writes_compressed_rle(case, paddle_infer, tmp_path):
    pytest.importorskip('pycocotools', reason='pycocotools is not installed')
    paddle_infer.main(['--model_dir', case.model_dir, '--image_dir', case.images_dir, '--batch_size', '3',
                       '--threshold', '0', '--enable_mkldnn', '--output_dir', str(tmp_path)])
    _check_results(case, str(tmp_path), compressed=True)
    # the drawing has the masks on it: the overlay changes pixels inside some mask of the first image
    drawn = cv2.imread(str(tmp_path / 'a_wide.png'))
    original = cv2.imread(os.path.join(case.images_dir, 'a_wide.png'))
    inside = case.ref['mask_file_a_wide'].any(0)
    assert (drawn[inside] != original[inside]).any(-1).mean() > 0.5


def test_onnxruntime_deploy_writes_uncompressed_rle_without_pycocotools(case, ort_infer, tmp_path, monkeypatch):
    if not os.path.isfile(os.path.join(case.model_dir, 'model.onnx')):
        pytest.skip('paddle2onnx is not installed: no model.onnx')
    monkeypatch.setattr(sys.modules['postprocess'], 'mask_util', None)
    ort_infer.main(['--model_dir', case.model_dir, '--image_dir', case.images_dir, '--batch_size', '2',
                    '--threshold', '0', '--output_dir', str(tmp_path)])
    _check_results(case, str(tmp_path), compressed=False)


def test_uncompressed_rle_edge_cases():
    postprocess = load_deploy_module('python/postprocess.py', 'deploy_postprocess')
    rng = np.random.RandomState(0)
    masks = [np.ones((3, 4), np.uint8), np.zeros((3, 4), np.uint8), (rng.rand(5, 7) > 0.5).astype(np.uint8)]
    masks[1][0, 0] = 1  # a mask starting with a 1: an empty first run of zeros
    for mask in masks:
        rle = postprocess.mask_to_rle(mask, compressed=False)
        assert rle['size'] == list(mask.shape)
        np.testing.assert_array_equal(_decode_runs(rle), mask)
    assert postprocess.mask_to_rle(masks[1], compressed=False)['counts'][:2] == [0, 1]
