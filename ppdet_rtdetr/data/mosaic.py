"""Dense one-to-one matching (DEIM, Huang et al., CVPR 2025): 2x2 mosaics give each image more targets.

A one-to-one matcher gives every gt exactly one positive query, so an image with few objects teaches the
decoder little per iteration. DEIM stitches four images into one (each at about half its scale), which
multiplies the positives per image by about four at the same cost, and switches the mosaics off for the
last epochs (RT-DETRv2's stop-epoch schedule), so the model ends on images like the ones it will see.

ppdet's reader gives a sample transform one sample, so the other three tiles come from a per-worker cache
of recently seen samples (DEIM's `use_cache` mode). Wrap the op in ``BeforeStopEpoch`` to stop it:

    RTDETRTrainReader:
      stop_epoch: 8
      sample_transforms:
        - Decode: {}
        - BeforeStopEpoch: {transforms: [DenseMosaic: {prob: 0.5, tile_size: 80}]}
        ...
"""
import random

import cv2
import numpy as np

from .transforms import register_transform

__all__ = ['DenseMosaic']

# per-box fields of ppdet's detection samples: concatenated over the four tiles
_PER_BOX = ('gt_bbox', 'gt_class', 'is_crowd', 'difficult', 'gt_score')
# per-box fields whose coordinates would need the tile's transform too: refused, not silently broken
_UNSUPPORTED = ('gt_poly', 'gt_segm', 'gt_keypoint', 'gt_rbox')


@register_transform
class DenseMosaic(object):
    """With probability `prob`, stitch the sample and three cached ones into a 2x2 mosaic.

    Each tile is the image resized (aspect kept) so that its shorter side is `tile_size` (None keeps it as
    it is); the four tiles meet at the centre of a canvas of ``2 * max tile height`` by ``2 * max tile
    width``, filled with `fill_value` elsewhere. Boxes follow their tile exactly: box * (sx, sy) + tile
    offset, with (sx, sy) the tile's resize factors, so every box stays inside the canvas and no box is
    cut or dropped. Runs after ``Decode`` (image HWC uint8, gt_bbox xyxy pixels).

    Every sample seen is added to the cache (one per reader worker, kept across the epoch, at most
    `max_cached` tiles; when full a random older tile leaves), so the first three samples of a worker pass
    through unchanged.

    Args:
        prob (float): probability in [0, 1] of making a mosaic (DEIM: 0.5).
        tile_size (int|None): shorter side of each tile in pixels; DEIM uses half the training size
            (320 for 640). None keeps every image at its own size.
        max_cached (int): at least 4; number of samples the cache keeps.
        fill_value (int): grey level of the canvas outside the tiles (DEIM: 0).

    Returns:
        The sample, or a new sample with the mosaic: ``image`` [H, W, 3] uint8, ``im_shape`` / ``h`` / ``w``
        of the canvas, the per-box fields of the four tiles concatenated (the sample's own first), and the
        sample's other fields (``im_id``, ...) unchanged.
    """

    def __init__(self, prob=0.5, tile_size=None, max_cached=50, fill_value=0):
        if not 0 <= prob <= 1:
            raise ValueError(f'DenseMosaic prob must be in [0, 1], got {prob}')
        if tile_size is not None and (not isinstance(tile_size, int) or tile_size < 8):
            raise ValueError(f'DenseMosaic tile_size must be None or an int >= 8 (pixels), got {tile_size!r}')
        if max_cached < 4:
            raise ValueError(f'DenseMosaic max_cached must be at least 4 (a mosaic has 4 tiles), got {max_cached}')
        self.prob = prob
        self.tile_size = tile_size
        self.max_cached = max_cached
        self.fill_value = fill_value
        self.cache = []

    def _tile(self, sample):
        """-> dict with the resized image and the sample's per-box fields (boxes scaled with the image)."""
        for key in _UNSUPPORTED:
            if key in sample and len(sample[key]):
                raise ValueError(f"DenseMosaic: samples with '{key}' are not supported (only boxes are moved "
                                 f"with their tile); remove '{key}' from the dataset's data_fields")
        image = sample['image']
        h, w = image.shape[:2]
        tile = {key: np.array(sample[key]) for key in _PER_BOX if key in sample}
        if self.tile_size is not None:
            scale = self.tile_size / min(h, w)
            new_w, new_h = max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            if 'gt_bbox' in tile:
                # the exact factors of the rounded size, so boxes follow the pixels
                factors = np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float32)
                tile['gt_bbox'] = tile['gt_bbox'] * factors
        tile['image'] = image
        return tile

    def _remember(self, tile):
        self.cache.append(tile)
        if len(self.cache) > self.max_cached:
            self.cache.pop(random.randrange(len(self.cache) - 1))  # never the newest

    def __call__(self, sample, context=None):
        tile = self._tile(sample)
        self._remember(tile)
        if len(self.cache) < 4 or random.random() >= self.prob:
            return sample
        # the sample itself plus three other cached tiles, in a random quadrant order
        others = random.sample(range(len(self.cache) - 1), 3)
        tiles = [tile] + [self.cache[i] for i in others]
        quadrants = list(range(4))
        random.shuffle(quadrants)
        tile_h = max(t['image'].shape[0] for t in tiles)
        tile_w = max(t['image'].shape[1] for t in tiles)
        canvas = np.full((2 * tile_h, 2 * tile_w, 3), self.fill_value, dtype=np.uint8)
        out = dict(sample)
        merged = {key: [] for key in _PER_BOX if key in tile}
        for t, quadrant in zip(tiles, quadrants):
            h, w = t['image'].shape[:2]
            # quadrant 0 1 / 2 3: the tile's inner corner touches the canvas centre (tile_w, tile_h)
            x0 = tile_w - w if quadrant in (0, 2) else tile_w
            y0 = tile_h - h if quadrant in (0, 1) else tile_h
            canvas[y0:y0 + h, x0:x0 + w] = t['image']
            for key in merged:
                value = t[key]
                if key == 'gt_bbox':
                    value = value + np.array([x0, y0, x0, y0], dtype=value.dtype)
                merged[key].append(value)
        for key, values in merged.items():
            out[key] = np.concatenate(values, axis=0)
        out['image'] = canvas
        out['im_shape'] = np.array(canvas.shape[:2], dtype=np.float32)
        out['h'], out['w'] = float(canvas.shape[0]), float(canvas.shape[1])
        return out
