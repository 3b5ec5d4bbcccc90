"""inference.yml's Global.model_name: the PaddleX model of each config's backbone, an override, a default."""
import os

import pytest
from conftest import ROOT, fresh_config

from ppdet_rtdetr import paddlex_files
from ppdet_rtdetr.paddlex_files import DEFAULT_PADDLEX_MODEL_NAME, paddlex_model_name

CONFIGS = os.path.join(ROOT, 'configs')


@pytest.mark.parametrize('config, name', [
    ('rtdetr/rtdetr_r18vd_6x_coco.yml', 'RT-DETR-R18'), ('rtdetr/rtdetr_r50vd_6x_coco.yml', 'RT-DETR-R50'),
    ('rtdetr/rtdetr_hgnetv2_l_6x_coco.yml', 'RT-DETR-L'), ('rtdetr/rtdetr_hgnetv2_h_6x_coco.yml', 'RT-DETR-H'),
    ('rtdetr/rtdetr_hgnetv2_x_6x_coco.yml', 'RT-DETR-X'), ('rtdetrv2/rtdetrv2_r18vd_120e_coco.yml', 'RT-DETR-R18'),
    # Mask-RT-DETR: PaddleX's instance-segmentation models
    ('mask_rtdetr/mask_rtdetr_hgnetv2_s_6x_coco.yml', 'Mask-RT-DETR-S'),
    ('mask_rtdetr/mask_rtdetr_hgnetv2_m_6x_coco.yml', 'Mask-RT-DETR-M'),
    ('mask_rtdetr/mask_rtdetr_hgnetv2_l_6x_coco.yml', 'Mask-RT-DETR-L'),
    ('mask_rtdetr/mask_rtdetr_hgnetv2_x_6x_coco.yml', 'Mask-RT-DETR-X'),
    ('mask_rtdetr/mask_rtdetr_hgnetv2_h_6x_coco.yml', 'Mask-RT-DETR-H'),
])
def test_backbone_gives_the_paddlex_model(config, name):
    assert paddlex_model_name(fresh_config(os.path.join(CONFIGS, config))) == name


def test_unknown_backbone_warns_and_takes_the_default(monkeypatch):
    warnings = []
    monkeypatch.setattr(paddlex_files.logger, 'warning', warnings.append)
    cfg = fresh_config(os.path.join(CONFIGS, 'rtdetr', 'rtdetr_r34vd_6x_coco.yml'))
    assert paddlex_model_name(cfg) == DEFAULT_PADDLEX_MODEL_NAME == 'RT-DETR-R50'
    assert warnings == ['PaddleX has no RT-DETR model of backbone RTDETRResNet (depth=34): inference.yml names RT-DETR-R50 '
                        '(PaddleX runs every RT-DETR name the same way); set -o export.paddlex_model_name=<name> to '
                        'choose another']


def test_override_wins_and_a_bad_one_is_refused():
    cfg = fresh_config(os.path.join(CONFIGS, 'rtdetr', 'rtdetr_r34vd_6x_coco.yml'),
                       export={'paddlex_model_name': 'RT-DETR-L'})
    assert paddlex_model_name(cfg) == 'RT-DETR-L'
    cfg = fresh_config(os.path.join(CONFIGS, 'rtdetr', 'rtdetr_r18vd_6x_coco.yml'), export={'paddlex_model_name': 7})
    with pytest.raises(ValueError, match=r'export.paddlex_model_name must be a PaddleX model name such as '
                                         r'RT-DETR-R50, got 7'):
        paddlex_model_name(cfg)
