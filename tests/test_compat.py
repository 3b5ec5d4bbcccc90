"""Each ppdet 2.6.0-on-Paddle-3 / Pillow-10 crash fix: the unpatched path fails, the patched one gives the right value."""
import io

import numpy as np
import paddle
import pytest
from PIL import Image, ImageDraw

import ppdet_rtdetr  # noqa: F401  (applies the shims)
from ppdet.data.transform.operators import Decode
from ppdet.engine import trainer as ppdet_trainer
from ppdet.optimizer import ModelEMA
from ppdet.utils.visualizer import draw_bbox
from ppdet_rtdetr import compat


def _draw_one_box():
    image = Image.new('RGB', (120, 90), (0, 0, 0))
    box = {'image_id': 1, 'category_id': 7, 'bbox': [30., 40., 50., 30.], 'score': 0.9}
    return draw_bbox(image, 1, {7: 'square'}, [box], threshold=0.5)


def test_textsize_shim_lets_ppdet_draw_boxes(monkeypatch):
    with monkeypatch.context() as patch:
        patch.delattr(ImageDraw.ImageDraw, 'textsize')  # Pillow >= 10 as shipped
        with pytest.raises(AttributeError, match='textsize'):
            _draw_one_box()
    pixels = np.asarray(_draw_one_box())
    assert pixels[40:71, 30].any(axis=-1).all(), 'left edge of the box not drawn'
    assert pixels[40 - 5, 32:40].any(), 'label background not drawn above the box'

    draw = ImageDraw.Draw(Image.new('L', (200, 50), 0))
    width, height = draw.textsize('square 0.90')
    assert (width, height) == tuple(draw.textbbox((0, 0), 'square 0.90')[2:])
    # ppdet fills [0, width) x [0, height) behind text drawn at (0, 0): all ink must fall inside
    canvas = Image.new('L', (200, 50), 0)
    ImageDraw.Draw(canvas).text((0, 0), 'square 0.90', fill=255)
    ys, xs = np.nonzero(np.asarray(canvas))
    assert xs.max() < width and ys.max() < height, (xs.max(), ys.max(), width, height)


def _frozen_model():
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Linear(3, 3), paddle.nn.BatchNorm2D(3),
                                 paddle.nn.Linear(3, 2))
    model[0].weight.stop_gradient = True  # a frozen layer, e.g. a stem with freeze_at
    return model


def test_ema_filter_no_grad_keeps_frozen_weights():
    model = _frozen_model()
    original = ModelEMA.__new__(ModelEMA)
    with pytest.raises(AttributeError, match="'set' object has no attribute 'append'"):
        ModelEMA.__init__.__wrapped__(original, model, 0.9, 'threshold', -1, None, True)

    filtered = ModelEMA(model, decay=0.9, ema_filter_no_grad=True)
    plain = ModelEMA(model, decay=0.9, ema_filter_no_grad=False)
    assert filtered.ema_black_list == {'0.weight'}, 'BN running stats must still be averaged'
    for step in range(3):
        with paddle.no_grad():
            model[2].weight.set_value(model[2].weight + 1.)
            model[1]._mean.set_value(model[1]._mean + 0.5)
        filtered.update()
        plain.update()
    got, reference = filtered.apply(), plain.apply()
    frozen_err = np.abs(got['0.weight'].numpy() - model[0].weight.numpy()).max()
    assert frozen_err == 0, 'frozen weight changed by EMA: max error {}'.format(frozen_err)
    for name in ('2.weight', '1._mean', '0.bias'):
        err = np.abs(got[name].numpy() - reference[name].numpy()).max()
        assert err < 1e-6, '{} differs from the unfiltered EMA by {}'.format(name, err)
    moved = np.abs(got['2.weight'].numpy() - model[2].weight.numpy()).max()
    assert moved > 0.1, 'trainable weight was not averaged (max difference {})'.format(moved)


def test_print_params_counts_instead_of_crashing(monkeypatch):
    from conftest import TINY_CFG, fresh_config

    cfg = fresh_config(TINY_CFG, print_params=True)
    with pytest.raises(IndexError, match='0-dimensional'):
        ppdet_trainer.Trainer.__init__.__wrapped__(ppdet_trainer.Trainer.__new__(ppdet_trainer.Trainer),
                                                   cfg, mode='test')
    infos = []
    monkeypatch.setattr(compat.logger, 'info', infos.append)
    trainer = ppdet_trainer.Trainer(cfg, mode='test')
    # ppdet's own expression, read with .item() as a 0-D tensor must be
    expected = sum([p.numel() for n, p in trainer.model.named_parameters()
                    if all([x not in n for x in ['_mean', '_variance', 'aux_']])]).item()
    assert infos == ['Model Params : {} M.'.format(expected / 1e6)]
    assert cfg.print_params and trainer.cfg.print_params, 'print_params must be restored'


def test_apply_is_idempotent():
    ema_init, trainer_init = ModelEMA.__init__, ppdet_trainer.Trainer.__init__
    compat.apply()
    compat.apply()
    assert ppdet_trainer.paddle is paddle and ModelEMA.__init__ is ema_init
    assert ppdet_trainer.Trainer.__init__ is trainer_init
    assert not hasattr(trainer_init.__wrapped__, '__wrapped__'), 'Trainer.__init__ wrapped twice'
    assert not hasattr(ModelEMA.__init__.__wrapped__, '__wrapped__'), 'ModelEMA wrapped twice'
    assert ImageDraw.ImageDraw.textsize is compat._textsize


def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_decode_needs_no_shim_for_odd_image_modes():
    """Grayscale, alpha, palette, 16-bit, CMYK and EXIF-rotated files decode to RGB [h, w, 3]."""
    rgb = Image.fromarray((np.random.RandomState(0).rand(30, 50, 3) * 255).astype('uint8'))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    files = {
        'L.png': _encode(rgb.convert('L'), 'PNG'),
        'LA.png': _encode(rgb.convert('LA'), 'PNG'),
        'RGBA.png': _encode(rgb.convert('RGBA'), 'PNG'),
        'P.png': _encode(rgb.convert('P'), 'PNG'),
        'I16.png': _encode(Image.fromarray(np.full((30, 50), 40000, dtype=np.uint16)), 'PNG'),
        'CMYK.jpg': _encode(rgb.convert('CMYK'), 'JPEG'),
    }
    for name, data in files.items():
        sample = Decode()({'image': data})
        assert sample['image'].shape == (30, 50, 3) and sample['image'].dtype == np.uint8, name
        assert list(sample['im_shape']) == [30, 50], name
        # ppdet's visualizer reopens the file with PIL and converts it the same way
        assert Image.open(io.BytesIO(data)).convert('RGB').size == (50, 30), name
    gray = Decode()({'image': files['L.png']})['image']
    assert (gray[..., 0] == gray[..., 2]).all(), 'grayscale did not become three equal channels'
    rotated = Decode()({'image': _encode(rgb, 'JPEG', exif=exif)})
    assert rotated['image'].shape == (50, 30, 3), 'EXIF orientation must match PIL exif_transpose'
