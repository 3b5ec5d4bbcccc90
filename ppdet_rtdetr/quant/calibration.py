"""Calibration images for post-training quantization, read the way the deployed model will see them.

The images come from the user's dataset (the config's TrainDataset, or a folder) and go through the config's
TestReader sample transforms with Resize set to the exported size: the preprocessing `tools/export_model.py`
wrote into infer_cfg.yml, so calibration ranges are measured on the pixels the deploy scripts feed.
"""
import copy
import glob
import os

import numpy as np

__all__ = ['dataset_image_paths', 'folder_image_paths', 'pick_evenly', 'ConfigPreprocess', 'FeedReader',
           'ImageCalibrationReader']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


def pick_evenly(items, n):
    """`n` items spread evenly over `items` (all of them when n >= len), first one included, order kept.

    A deterministic spread rather than the first n: datasets are often sorted by scene or source.
    """
    if n <= 0:
        raise ValueError(f'the number of calibration images must be positive, got {n}')
    if n >= len(items):
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def folder_image_paths(image_dir):
    """Sorted image files of a folder; FileNotFoundError naming the folder if it holds none."""
    paths = sorted(p for p in glob.glob(os.path.join(image_dir, '*'))
                   if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(f'no {"/".join(IMAGE_EXTENSIONS)} image in calibration folder {image_dir}')
    return paths


def dataset_image_paths(cfg, split='TrainDataset'):
    """Image files of the config's dataset `split` (a ppdet dataset: COCO, VOC, ...), in its order."""
    dataset = cfg.get(split)
    if dataset is None:
        raise ValueError(f'the config has no {split}: pass --calib_dir with a folder of images instead')
    dataset = copy.deepcopy(dataset)  # parse_dataset fills the dataset object of the global config otherwise
    dataset.check_or_download_dataset()
    dataset.parse_dataset()
    paths = [record['im_file'] for record in dataset.roidbs]
    if not paths:
        raise ValueError(f'{split} of the config ({dataset.get_anno()}) lists no image')
    return paths


class ConfigPreprocess:
    """The config's TestReader sample transforms (ppdet's own operators) at the exported size.

    Args:
        cfg (AttrDict): the loaded config.
        image_shape (list[int]): [3, H, W] of the export (infer_cfg.yml `image_shape`); every Resize of the
            reader is set to H x W, as tools/export_model.py writes it.

    __call__(path) -> {'image' float32 [1, 3, H, W], 'im_shape' float32 [1, 2], 'scale_factor' float32 [1, 2]}.
    """

    def __init__(self, cfg, image_shape):
        from ppdet.data.reader import Compose
        transforms = []
        for transform in cfg['TestReader']['sample_transforms']:
            for name, args in transform.items():
                args = dict(args or {})
                if name == 'Resize':
                    args['target_size'] = list(image_shape[1:])
                transforms.append({name: args})
        self.compose = Compose(transforms, num_classes=cfg['num_classes'])

    def __call__(self, path):
        sample = self.compose({'im_file': path})
        return {'image': sample['image'][None].astype('float32'),
                'im_shape': np.asarray(sample['im_shape'], 'float32')[None],
                'scale_factor': np.asarray(sample['scale_factor'], 'float32')[None]}


class FeedReader:
    """onnxruntime CalibrationDataReader over a fixed list of feeds ({input name: array [1, ...]}).

    The feeds are kept, so the reader can be rewound (`rewind()`) and read again, as the sensitivity sweep does;
    `get_next()` returns None at the end, as onnxruntime expects.
    """

    def __init__(self, feeds):
        self.feeds = list(feeds)
        self.rewind()

    def get_next(self):
        return next(self._iter, None)

    def rewind(self):
        self._iter = iter(self.feeds)

    def __len__(self):
        return len(self.feeds)

    def __iter__(self):
        return iter(self.feeds)


class ImageCalibrationReader(FeedReader):
    """A `FeedReader` over preprocessed images, one image per run, computed once.

    Args:
        paths (list[str]): image files.
        preprocess (callable): path -> {input name: array [1, ...]} (e.g. `ConfigPreprocess`).
        input_names (list[str]): the model's inputs; other keys of `preprocess`'s result are dropped.
    """

    def __init__(self, paths, preprocess, input_names):
        feeds = [{name: value for name, value in preprocess(p).items() if name in input_names} for p in paths]
        missing = set(input_names) - set(feeds[0]) if feeds else set()
        if missing:
            raise ValueError(f'the preprocessing gives no {sorted(missing)} (model inputs: {list(input_names)})')
        super().__init__(feeds)
