"""Loading pretrain_weights through RTDETRTrainer.load_weights: fine-tuning an 80-class checkpoint into a
4-class model skips the class head with one listing; a checkpoint of another network is one clear error."""
import re
import types

import numpy as np
import paddle
import pytest

from conftest import TINY_CFG, build_from_config
from helpers.data_cases import LIGHT, LogRecords

from ppdet_rtdetr.engine import pretrain

HEAD_BLOCK = """\
  transformer.denoising_class_embed.weight  checkpoint [80, 32]        model [4, 32]
  transformer.enc_score_head.weight         checkpoint [32, 80]        model [32, 4]
  transformer.enc_score_head.bias           checkpoint [80]            model [4]
  transformer.dec_score_head.0.weight       checkpoint [32, 80]        model [32, 4]
  transformer.dec_score_head.0.bias         checkpoint [80]            model [4]
  transformer.dec_score_head.1.weight       checkpoint [32, 80]        model [32, 4]
  transformer.dec_score_head.1.bias         checkpoint [80]            model [4]"""


@pytest.fixture(scope='module')
def coco80(tmp_path_factory):
    """An "80-class" checkpoint: the tiny config built with num_classes=80."""
    path = str(tmp_path_factory.mktemp('weights') / 'coco80')
    paddle.seed(80)
    paddle.save(build_from_config(TINY_CFG, num_classes=80, **LIGHT).state_dict(), path + '.pdparams')
    return path


@pytest.fixture
def model():
    paddle.seed(4)
    return build_from_config(TINY_CFG, **LIGHT)


def _load_through_trainer(model, weights):
    """RTDETRTrainer.load_weights (what tools/train.py calls for pretrain_weights) on `model`."""
    from ppdet_rtdetr.engine import RTDETRTrainer
    trainer = types.SimpleNamespace(is_loaded_weights=False, model=model, start_epoch=None)
    with LogRecords('ppdet_rtdetr.engine.pretrain') as log:
        RTDETRTrainer.load_weights(trainer, weights)
    return log.messages


def _numpy(state):
    return {k: v.numpy().copy() for k, v in state.items()}


def test_finetune_to_fewer_classes_skips_the_head_in_one_block(coco80, model):
    before = _numpy(model.state_dict())
    log = _load_through_trainer(model, coco80)

    assert log[0] == ('WARNING', 'Fine-tuning from {}.pdparams: 7 weights have another shape in the checkpoint and '
                      'keep their initial values (expected for the class head when num_classes differs):\n{}'
                      .format(coco80, HEAD_BLOCK))
    assert log[1] == ('INFO', 'Loaded 347 of 354 model weights from {}.pdparams; 0 not in the file keep their '
                      'initial values; 0 file entries unused.'.format(coco80))
    assert len(log) == 2
    checkpoint = paddle.load(coco80 + '.pdparams')
    head = {line.split()[0] for line in HEAD_BLOCK.splitlines()}
    for key, value in model.state_dict().items():
        want = before[key] if key in head else checkpoint[key].numpy()
        np.testing.assert_array_equal(value.numpy(), want, err_msg=key)


def test_a_backbone_checkpoint_fills_the_backbone(tmp_path, model):
    """An ImageNet-style backbone file (ppdet ResNet names, no prefix) fills a third of the model: allowed."""
    backbone = build_from_config(TINY_CFG, **LIGHT).backbone.state_dict()
    paddle.save(backbone, str(tmp_path / 'r18.pdparams'))
    log = _load_through_trainer(model, str(tmp_path / 'r18'))
    assert log == [('INFO', 'Loaded 115 of 354 model weights from {}; 239 not in the file keep their initial '
                            'values (neck: 147, transformer: 92); 0 file entries unused.'.format(
                                tmp_path / 'r18.pdparams'))]
    np.testing.assert_array_equal(model.backbone.conv1.conv1_1.conv.weight.numpy(),
                                  backbone['conv1.conv1_1.conv.weight'].numpy())


def test_unrelated_names_are_one_error_with_the_counts(tmp_path, model):
    paddle.save({'head.fc.weight': paddle.ones([3, 2]), 'foo.weight': paddle.ones([2]),
                 'bar.bias': paddle.ones([1])}, str(tmp_path / 'other.pdparams'))
    before = _numpy(model.state_dict())
    with pytest.raises(pretrain.WeightsMismatchError) as error:
        _load_through_trainer(model, str(tmp_path / 'other.pdparams'))
    assert str(error.value) == (
        '{} does not fit this model (a checkpoint of another architecture?): 0 of 354 model weights match by '
        'name and shape (0 more by name only, with another shape), 354 model weights are not in the file, 3 of '
        '3 file entries match nothing. At least half of the model\'s weights (a detector checkpoint) or half of '
        'the file\'s entries (a backbone checkpoint) must load. Not in the file: backbone: 115, neck: 147, '
        'transformer: 92. Matching nothing: bar.bias, foo.weight, head.fc.weight.'.format(
            tmp_path / 'other.pdparams'))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[key], err_msg='{} changed'.format(key))


def test_a_backbone_of_another_depth_is_an_error(tmp_path, model):
    """ResNet-50 names overlap ResNet-18's (res2a.branch2a, ...) but the shapes and most entries do not."""
    from ppdet_rtdetr.modeling.resnet import RTDETRResNet
    r50 = RTDETRResNet(depth=50, width_mult=0.25, return_idx=[1, 2, 3]).state_dict()
    paddle.save(r50, str(tmp_path / 'r50.pdparams'))
    with pytest.raises(pretrain.WeightsMismatchError) as error:
        _load_through_trainer(model, str(tmp_path / 'r50'))
    counts = re.match(r'.* (\d+) of 354 model weights match by name and shape \((\d+) more by name only, with '
                      r'another shape\), (\d+) model weights are not in the file, (\d+) of 275 file entries match '
                      r'nothing\.', str(error.value))
    loaded, reshaped, missing, unused = map(int, counts.groups())
    assert loaded + reshaped + missing == 354 and loaded + reshaped + unused == 275
    assert 0 < loaded < 275 / 2 and reshaped > 0


def test_names_match_exactly_or_by_longest_dotted_suffix():
    pairs = pretrain.match_names(['backbone.res2.a.weight', 'neck.x.weight', 'x.weight'],
                                 ['res2.a.weight', 'a.weight', 'x.weight'])
    # x.weight is taken by its equal-named key, so neck.x.weight stays unmatched
    assert pairs == {'backbone.res2.a.weight': 'res2.a.weight', 'x.weight': 'x.weight'}
    with pytest.raises(ValueError, match="weight 'conv.weight' matches both 'a.conv.weight' and 'b.conv.weight'"):
        pretrain.match_names(['a.conv.weight', 'b.conv.weight'], ['conv.weight'])
