"""RTDETRSwinTransformer: paddledet 2.6.0's Swin with PaddleDetection develop's layout and its `arch` option."""
import numpy as np
import paddle
from ppdet.modeling.backbones.swin_transformer import SwinTransformer

from ppdet_rtdetr.modeling.swin import RTDETRSwinTransformer

SMALL = dict(embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=4, out_indices=[1, 2, 3])


def test_same_layers_and_outputs_as_ppdet_without_the_constant_index():
    paddle.seed(0)
    theirs = SwinTransformer(**SMALL)
    ours = RTDETRSwinTransformer(**SMALL, pretrained='')
    their_layout = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    # develop (the official RT-DETR Swin-L checkpoint) does not save relative_position_index; 2.6.0 does
    want = {k: v for k, v in their_layout.items() if not k.endswith('relative_position_index')}
    assert len(want) < len(their_layout)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want
    ours.set_state_dict(theirs.state_dict())
    theirs.eval(), ours.eval()
    x = {'image': paddle.rand([1, 3, 64, 96])}
    for a, b in zip(theirs(x), ours(x)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_arch_sets_the_official_sizes_and_weights_url(monkeypatch):
    asked = []
    monkeypatch.setattr('ppdet_rtdetr.modeling.swin.load_backbone_pretrained',
                        lambda layer, url, key: asked.append((url, key)))
    net = RTDETRSwinTransformer(arch='swin_T_224', embed_dim=8, out_indices=[3])
    assert net.num_features == [96, 192, 384, 768], 'arch must win over embed_dim, as in PaddleDetection'
    assert [len(layer.blocks) for layer in net.layers] == [2, 2, 6, 2]
    assert asked == [('https://bj.bcebos.com/v1/paddledet/models/pretrained/'
                      'swin_tiny_patch4_window7_224_22kto1k_pretrained.pdparams', 'SwinTransformer.pretrained')]
