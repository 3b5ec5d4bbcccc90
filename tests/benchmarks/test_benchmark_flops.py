"""benchmarks/harness: GFLOPs (multiply-add = 2) of convs, linears and attention per top-level part, and the
dygraph stage times stamped by forward hooks."""
import json
import os
import sys
import time

import paddle
import paddle.nn as nn

from helpers.export_utils import ROOT
from ppdet_rtdetr.modeling.layers import MultiHeadAttention

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))  # the lab's scripts and their library, `harness`
from harness.flops import count_gflops  # noqa: E402
from harness.runners import STAGES, dygraph_runner  # noqa: E402


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
    got = count_gflops(_Toy(), paddle.rand([b, 3, h, w]))
    for part, flops in want.items():
        assert abs(got[part] * 1e9 - flops) < 1e-3, f'{part}: {got[part] * 1e9:.0f} FLOPs, want {flops}'


class _Sleeper(nn.Layer):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def forward(self, x, *_):
        time.sleep(self.seconds)
        return x


class _StagedModel(nn.Layer):
    """The stage layout of RTDETRDetector: backbone -> neck -> transformer -> head + post-process."""

    def __init__(self, seconds):
        super().__init__()
        self.backbone, self.neck, self.transformer = (_Sleeper(s) for s in seconds[:3])
        self.tail = seconds[3]

    def forward(self, inputs):
        out = self.transformer(self.neck(self.backbone(inputs['image'])))
        time.sleep(self.tail)
        return {'bbox': out}


def test_stage_hooks_time_each_stage_of_the_models_own_forward():
    want = [0.06, 0.02, 0.08, 0.04]
    run, stages = dygraph_runner(_StagedModel(want), {'image': paddle.zeros([1, 3]).numpy()})
    got = stages()
    assert len(got) == len(STAGES) == 4
    # sleeps last at least their time; the margin covers a loaded machine's scheduling delays
    assert all(w <= g < w + 0.03 for g, w in zip(got, want)), f'stage times {got.tolist()}, slept {want}'
    assert stages().shape == (4,), 'the hooks must be removed after each call (no extra stamps)'


def test_emit_report_prints_and_writes_the_same_json(tmp_path, capsys):
    from harness.harness import emit_report
    report = {'engine': 'onnxruntime', 'latency_ms': {'median': 12.5}, 'notes': ['a']}
    emit_report(report, str(tmp_path / 'r.json'))
    printed = capsys.readouterr().out
    assert json.loads(printed) == report
    assert (tmp_path / 'r.json').read_text() == printed
