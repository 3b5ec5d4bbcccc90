"""tools/benchmark.py counts GFLOPs (multiply-add = 2) of convs, linears and attention, per top-level part."""
import importlib.util
import sys

import paddle
import paddle.nn as nn

from helpers.export_utils import ROOT

sys.path.insert(0, ROOT)

from ppdet_rtdetr.modeling.layers import MultiHeadAttention  # noqa: E402


def _benchmark_tool():
    spec = importlib.util.spec_from_file_location('benchmark_tool', f'{ROOT}/tools/benchmark.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Toy(nn.Layer):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv2D(3, 8, 3, padding=1, groups=1)
        self.neck = nn.Conv2D(8, 8, 3, padding=1, groups=4)
        self.transformer = nn.LayerList([nn.Linear(8, 16), MultiHeadAttention(16, 2)])

    def forward(self, x):
        feat = self.neck(self.backbone(x))
        # [b, c, h, w] -> [b, h*w, c]
        tokens = self.transformer[0](feat.flatten(2).transpose([0, 2, 1]))
        return self.transformer[1](tokens[:, :30], tokens, tokens)


def test_count_gflops_by_part_matches_the_formulas():
    b, h, w, l, lq, c = 2, 10, 12, 120, 30, 16
    want = {'backbone': 2 * b * 8 * h * w * 3 * 9,
            'neck': 2 * b * 8 * h * w * (8 // 4) * 9,  # grouped: 2 input channels per output channel
            'transformer': (2 * b * l * 8 * c  # Linear(8, 16)
                            + 2 * b * (lq + 2 * l) * c * c  # packed q/k/v projections
                            + 2 * 2 * b * lq * l * c  # q k^T and attn v
                            + 2 * b * lq * c * c)}  # out_proj
    got = _benchmark_tool().count_gflops(_Toy(), paddle.rand([b, 3, h, w]))
    for part, flops in want.items():
        assert abs(got[part] * 1e9 - flops) < 1e-3, f'{part}: {got[part] * 1e9:.0f} FLOPs, want {flops}'
