"""The loss and matcher sections of an official Mask-RT-DETR config translate to RTDETRMaskCriterion and the
mask-cost RTDETRHungarianMatcher, official defaults included (the model sections are translated elsewhere)."""
from ppdet_rtdetr.modeling.mask_criterion import RTDETRMaskCriterion
from ppdet_rtdetr.modeling.matcher import RTDETRHungarianMatcher
from ppdet_rtdetr.official.model import translate_section

# configs/mask_rtdetr/_base_/mask_rtdetr_r50vd.yml: the globals and MaskDINOHead.loss, as written there
GLOBALS = {'with_mask': True, 'use_focal_loss': True, 'hidden_dim': 256, 'num_prototypes': 32}
LOSS = {'name': 'MaskDINOLoss', 'loss_coeff': {'class': 4, 'bbox': 5, 'giou': 2, 'mask': 5, 'dice': 5},
        'aux_loss': True, 'use_vfl': True, 'vfl_iou_type': 'mask',
        'matcher': {'name': 'HungarianMatcher', 'matcher_coeff': {'class': 4, 'bbox': 5, 'giou': 2, 'mask': 5,
                                                                  'dice': 5}}}


def _translate(loss):
    section = {k: v for k, v in loss.items() if k != 'name'}
    return translate_section(dict(GLOBALS), 'MaskDINOLoss', section, 'mask_rtdetr_r50vd.yml')


def test_official_loss_section_builds_our_criterion_with_the_official_numbers():
    options, extra = _translate(LOSS)
    assert options == {'loss_coeff': LOSS['loss_coeff'], 'aux_loss': True, 'use_vfl': True, 'vfl_iou_type': 'mask',
                       'matcher': 'RTDETRHungarianMatcher'}
    # with_mask and use_focal_loss stay globals: ours shares them as the official modules do
    assert extra == {'RTDETRHungarianMatcher': {'matcher_coeff': LOSS['matcher']['matcher_coeff']}}
    matcher = RTDETRHungarianMatcher(**extra['RTDETRHungarianMatcher'], with_mask=GLOBALS['with_mask'])
    crit = RTDETRMaskCriterion(**dict(options, matcher=matcher))
    assert crit.vfl_iou_type == 'mask' and crit.num_sample_points == 12544 and matcher.num_sample_points == 12544


def test_a_silent_section_gets_the_official_defaults():
    options, extra = _translate({'name': 'MaskDINOLoss', 'matcher': 'HungarianMatcher'})
    assert options['use_vfl'] is False and options['vfl_iou_type'] == 'bbox'
    assert options['loss_coeff'] == {'class': 4, 'bbox': 5, 'giou': 2, 'mask': 5, 'dice': 5}
    # use_focal_loss is a global of the file: the official default (False) is not written over it
    assert 'use_focal_loss' not in options
    # the official matcher's default weights include the mask terms, so with_mask works without them
    assert extra['RTDETRHungarianMatcher']['matcher_coeff'] == {'class': 1, 'bbox': 5, 'giou': 2, 'mask': 1,
                                                                'dice': 1}
    RTDETRHungarianMatcher(**extra['RTDETRHungarianMatcher'], with_mask=True)
