"""configs/datasets/voc.yml: ppdet's VOCDataSet loads a VOC-layout folder, trains a step and evaluates (VOC mAP)."""
import os

import cv2
import numpy as np
import pytest

from conftest import ROOT, TINY_CFG, fresh_config
from helpers.data_cases import LIGHT, checkpoint_files

LABELS = ['cat', 'dog']
# image stem -> (width, height, [(name, difficult, xmin, ymin, xmax, ymax)])
IMAGES = {
    '000001': (96, 64, [('cat', 0, 10, 8, 40, 50), ('dog', 0, 50, 20, 90, 60)]),
    '000002': (80, 72, [('dog', 1, 5, 5, 30, 40)]),
    '000003': (96, 64, [('cat', 0, 20, 10, 70, 60)]),
}
SPLITS = {'trainval.txt': ['000001', '000002'], 'test.txt': ['000003']}


def _xml(stem, width, height, objects):
    boxes = ''.join(
        '<object><name>{}</name><difficult>{}</difficult><bndbox><xmin>{}</xmin><ymin>{}</ymin>'
        '<xmax>{}</xmax><ymax>{}</ymax></bndbox></object>'.format(*obj) for obj in objects)
    return ('<annotation><folder>VOC2007</folder><filename>{}.jpg</filename><size><width>{}</width>'
            '<height>{}</height><depth>3</depth></size>{}</annotation>'.format(stem, width, height, boxes))


@pytest.fixture(scope='module')
def voc_root(tmp_path_factory):
    """VOCdevkit/VOC2007/{JPEGImages,Annotations}, trainval.txt / test.txt and label_list.txt."""
    root = tmp_path_factory.mktemp('voc')
    devkit = root / 'VOCdevkit' / 'VOC2007'
    (devkit / 'JPEGImages').mkdir(parents=True)
    (devkit / 'Annotations').mkdir()
    rng = np.random.RandomState(0)
    for stem, (width, height, objects) in IMAGES.items():
        image = rng.randint(0, 255, (height, width, 3)).astype(np.uint8)
        for _, _, x1, y1, x2, y2 in objects:
            image[y1:y2, x1:x2] = 255
        cv2.imwrite(str(devkit / 'JPEGImages' / (stem + '.jpg')), image)
        (devkit / 'Annotations' / (stem + '.xml')).write_text(_xml(stem, width, height, objects))
    for split, stems in SPLITS.items():
        (root / split).write_text(''.join('VOCdevkit/VOC2007/JPEGImages/{0}.jpg VOCdevkit/VOC2007/Annotations/'
                                          '{0}.xml\n'.format(stem) for stem in stems))
    (root / 'label_list.txt').write_text('\n'.join(LABELS) + '\n')
    return str(root)


def _config(tmp_path, voc_root, **overrides):
    """The light tiny model with configs/datasets/voc.yml as its dataset, on voc_root."""
    from ppdet_rtdetr.cli import apply_overrides
    from ppdet_rtdetr.device import resolve_device
    leaf = tmp_path / 'rtdetr_tiny_voc.yml'
    leaf.write_text("_BASE_: ['{}', '{}']\nnum_classes: {}\n".format(
        TINY_CFG, os.path.join(ROOT, 'configs', 'datasets', 'voc.yml'), len(LABELS)))
    cfg = fresh_config(str(leaf), save_dir=str(tmp_path / 'out'), **LIGHT, **overrides)
    apply_overrides({name: {'dataset_dir': voc_root} for name in ('TrainDataset', 'EvalDataset', 'TestDataset')})
    resolve_device(cfg)
    return cfg


def test_voc_config_loads_the_xml_boxes(tmp_path, voc_root):
    from ppdet.core.workspace import create
    cfg = _config(tmp_path, voc_root)
    assert (cfg.metric, cfg.map_type, type(cfg.TrainDataset).__name__) == ('VOC', '11point', 'VOCDataSet')
    dataset = create('TrainDataset')
    dataset.check_or_download_dataset()
    dataset.parse_dataset()
    records = {os.path.basename(r['im_file']): r for r in dataset.roidbs}
    assert sorted(records) == ['000001.jpg', '000002.jpg']
    first, second = records['000001.jpg'], records['000002.jpg']
    assert (first['w'], first['h']) == (96, 64)
    np.testing.assert_array_equal(first['gt_class'][:, 0], [0, 1])  # label_list order
    np.testing.assert_allclose(first['gt_bbox'], [[10, 8, 40, 50], [50, 20, 90, 60]])
    np.testing.assert_array_equal(second['difficult'][:, 0], [1])


def test_voc_trains_a_step_and_evaluates(tmp_path, voc_root):
    from ppdet.engine import Trainer
    cfg = _config(tmp_path, voc_root, epoch=1)
    trainer = Trainer(cfg, mode='train')
    assert len(trainer.loader) == 1  # 2 images, batch 2
    trainer.train()
    # the folder is named after the config file
    assert checkpoint_files(tmp_path / 'out') == ['rtdetr_tiny_voc/model_final.pdopt',
                                                  'rtdetr_tiny_voc/model_final.pdparams']

    cfg = _config(tmp_path, voc_root, weights=str(tmp_path / 'out' / 'rtdetr_tiny_voc' / 'model_final'))
    evaluator = Trainer(cfg, mode='eval')
    evaluator.load_weights(cfg.weights)
    evaluator.evaluate()
    result = evaluator._metrics[0].get_results()
    assert list(result) == ['bbox'] and 0. <= result['bbox'][0] <= 100.
