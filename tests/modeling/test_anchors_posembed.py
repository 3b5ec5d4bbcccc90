"""Anchors and position embeddings against direct formulas, on non-square grids."""
import math

import numpy as np
import paddle

from ppdet_rtdetr.modeling.anchors import generate_anchors
from ppdet_rtdetr.modeling.hybrid_encoder import sincos_position_embedding


def _direct_anchors(shapes, grid_size=0.05, eps=1e-2):
    rows = []
    for lvl, (h, w) in enumerate(shapes):
        for r in range(h):
            for c in range(w):
                rows.append([(c + 0.5) / w, (r + 0.5) / h, grid_size * 2 ** lvl, grid_size * 2 ** lvl])
    a = np.array(rows)
    valid = np.all((a > eps) & (a < 1 - eps), axis=1)
    return a, valid


def test_anchors_non_square_640x480_match_direct_formula():
    shapes = [(480 // s, 640 // s) for s in (8, 16, 32)]  # (h, w): 60x80, 30x40, 15x20
    anchors, valid = generate_anchors(shapes)
    want, want_valid = _direct_anchors(shapes)
    got_valid = valid.numpy()[0, :, 0]
    np.testing.assert_array_equal(got_valid, want_valid)
    got = 1 / (1 + np.exp(-anchors.numpy()[0][got_valid]))  # back from logit space
    err = np.abs(got - want[want_valid]).max()
    assert err < 1e-5, f'max error {err}'
    assert np.all(np.isinf(anchors.numpy()[0][~got_valid])), 'invalid anchors must be +inf'
    # x is normalised by the width, y by the height: the last cell's centre of level 0
    x_last, y_last = want[80 * 60 - 1, :2]
    assert math.isclose(x_last, 79.5 / 80) and math.isclose(y_last, 59.5 / 60)


def test_sincos_embedding_matches_formula_on_non_square_grid():
    h, w, dim, t = 3, 5, 16, 10000.
    got = sincos_position_embedding(h, w, dim, t).numpy()[0]
    omega = 1. / t ** (np.arange(dim // 4) / (dim // 4))
    for r in range(h):
        for c in range(w):
            want = np.concatenate([np.sin(r * omega), np.cos(r * omega), np.sin(c * omega), np.cos(c * omega)])
            err = np.abs(got[r * w + c] - want).max()
            assert err < 1e-6, f'token ({r}, {c}) max error {err}'


def test_encoder_uses_precomputed_buffers_only_for_their_size():
    from ppdet_rtdetr.modeling.hybrid_encoder import RTDETRHybridEncoder
    enc = RTDETRHybridEncoder(in_channels=[8, 8, 8], hidden_dim=16, encoder_layer=dict(nhead=2, dim_feedforward=32),
                              eval_size=[64, 96])
    enc.eval()
    assert 'pos_embed2' not in enc.state_dict(), 'position embeddings must stay out of checkpoints'
    assert enc._pos_embed(2, 2, 3) is enc.pos_embed2, 'the eval_size grid must use the buffer'
    np.testing.assert_allclose(enc._pos_embed(2, 2, 3).numpy(), sincos_position_embedding(2, 3, 16).numpy())
    feats = [paddle.rand([1, 8, 64 // s, 96 // s]) for s in (8, 16, 32)]
    outs = enc(feats)
    assert [tuple(o.shape) for o in outs] == [(1, 16, 8, 12), (1, 16, 4, 6), (1, 16, 2, 3)]


def test_transposed_eval_size_gets_its_own_embedding():
    """eval_size 64x96 gives a 2x3 grid on level 2; a 96x64 input gives 3x2, the same 6 tokens. Its embedding
    must be the 3x2 one (rows and columns swapped otherwise), checked against the formula, not the shape."""
    from ppdet_rtdetr.modeling.hybrid_encoder import RTDETRHybridEncoder
    enc = RTDETRHybridEncoder(in_channels=[8, 8, 8], hidden_dim=16, encoder_layer=dict(nhead=2, dim_feedforward=32),
                              eval_size=[64, 96])
    enc.eval()
    got = enc._pos_embed(2, 3, 2).numpy()[0]
    omega = 1. / 10000. ** (np.arange(4) / 4)
    for r in range(3):
        for c in range(2):
            want = np.concatenate([np.sin(r * omega), np.cos(r * omega), np.sin(c * omega), np.cos(c * omega)])
            err = np.abs(got[r * 2 + c] - want).max()
            assert err < 1e-6, f'token ({r}, {c}) of the 3x2 grid: max error {err} (the 2x3 buffer was used?)'
