"""How far INT8 moves the detections, and which parts of the model to keep in float32 because of it.

`detection_drift` compares two detectors' outputs on the same images without labels; `sweep` quantizes one
group of nodes at a time (see `ort_int8.node_groups`), measures the drift each causes alone, and puts groups
back to float32, the most sensitive first, until the whole model's drift is within a tolerance.
"""
import os
from collections import OrderedDict

import numpy as np

from .ort_int8 import node_groups, quantize_model

__all__ = ['box_iou', 'detection_drift', 'OrtRunner', 'sweep']


def box_iou(box, boxes):
    """IoU of one xyxy box [4] with each of `boxes` [n, 4] -> [n] (0 for empty unions)."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(np.clip(box[2:] - box[:2], 0, None))
    areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.)


def detection_drift(ref, got, top_k=10):
    """How far the detections `got` moved from `ref`, per reference detection, weighted by its score.

    Args:
        ref, got (list of ndarray): per image, rows (class, score, x1, y1, x2, y2) as the deploy contract.
        top_k (int): the reference detections compared per image: the `top_k` highest scores.
    Returns:
        dict: for each of the compared reference detections, its partner in `got` is the detection of the same
        class with the highest IoU (none: IoU 0, score 0). `mean_abs_score_diff` and `mean_iou` are means
        weighted by the reference score (a confident detection matters to AP, a 0.02 one barely does),
        `max_abs_score_diff` and `min_iou` are over all compared detections, and `drift` =
        mean_abs_score_diff + (1 - mean_iou) is the one number the sweep ranks by (0 when nothing moved).
    """
    score_diffs, ious, weights = [], [], []
    for ref_dets, got_dets in zip(ref, got):
        for row in ref_dets[np.argsort(-ref_dets[:, 1], kind='stable')[:top_k]]:
            same = got_dets[got_dets[:, 0] == row[0]]
            weights.append(max(float(row[1]), 1e-6))
            if len(same) == 0:
                score_diffs.append(abs(float(row[1])))
                ious.append(0.)
                continue
            iou = box_iou(row[2:], same[:, 2:])
            best = int(np.argmax(iou))
            score_diffs.append(abs(float(row[1] - same[best, 1])))
            ious.append(float(iou[best]))
    if not ious:
        raise ValueError('no reference detection to compare')
    score_diffs, ious, weights = np.array(score_diffs), np.array(ious), np.array(weights)
    mean_diff, mean_iou = float(np.average(score_diffs, weights=weights)), float(np.average(ious, weights=weights))
    return OrderedDict([('mean_abs_score_diff', round(mean_diff, 5)),
                        ('max_abs_score_diff', round(float(score_diffs.max()), 5)),
                        ('mean_iou', round(mean_iou, 5)), ('min_iou', round(float(ious.min()), 5)),
                        ('drift', round(mean_diff + 1 - mean_iou, 5))])


class OrtRunner:
    """An onnxruntime CPU session of an exported RT-DETR (with its post-process) -> detections per image.

    Args:
        model_file (str): ONNX file whose outputs are (bbox [N, 6], bbox_num [b]).
        threads (int): intra-op threads.
    __call__(feeds: list of {input name: array [1, ...]}) -> list of [K_i, 6] arrays, one per feed.
    """

    def __init__(self, model_file, threads=1):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # paddle2onnx leaves unused initializers, each one a warning
        self.session = ort.InferenceSession(model_file, options, providers=['CPUExecutionProvider'])
        outputs = self.session.get_outputs()
        if len(outputs) != 2 or outputs[0].shape[-1] != 6:
            raise ValueError(f'{model_file} has raw outputs (exclude_post_process): the sweep compares '
                             'detections, so quantize an export with the post-process, or give the float32 '
                             'groups yourself (--fp32_groups)')
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, feeds):
        dets = []
        for feed in feeds:
            bbox, bbox_num = self.session.run(None, {name: feed[name] for name in self.input_names})
            dets.append(bbox[:int(bbox_num[0])])
        return dets


def sweep(prepared, calibration_cache, reader, work_dir, tolerance=0.05, top_k=10, threads=1, method='MinMax',
          log=print):
    """Per-group sensitivity of `prepared` (ort_int8.prepare_model's output) and the float32 groups it implies.

    Each group is quantized alone (every other node float32) and run on the calibration images of `reader`,
    giving its `detection_drift` against the float32 model. Then, starting from the all-INT8 model, the
    group with the largest drift alone goes back to float32, then the next, until the drift of the whole
    model is at most `tolerance`: the fewest float32 groups that the measurement asks for, the most sensitive
    first (when drifts add up, fixing the worst part buys the most).

    Returns:
        dict: `groups` {name: number of nodes}, `drift_alone` {name: drift dict}, `steps` [{fp32_groups,
        drift}] from all-INT8 on, `fp32_groups` [names], `fp32_nodes` [node names], `drift_final` (the last
        step's drift), `final_file` (its model in work_dir), `tolerance`, `top_k`.
    """
    groups = OrderedDict((name, nodes) for name, nodes in node_groups(prepared).items() if nodes)
    every_node = [n for nodes in groups.values() for n in nodes]
    ref = OrtRunner(prepared, threads)(reader.feeds)

    def drift_of(name, fp32_nodes):
        path = quantize_model(prepared, os.path.join(work_dir, f'{name}.onnx'), calibration_cache, reader,
                              fp32_nodes, method)
        drift = detection_drift(ref, OrtRunner(path, threads)(reader.feeds), top_k)
        log(f'int8 {name}: drift {drift["drift"]:.4f} (mean |score diff| {drift["mean_abs_score_diff"]:.4f}, '
            f'mean IoU {drift["mean_iou"]:.4f})')
        return path, drift

    report = OrderedDict(tolerance=tolerance, top_k=top_k, groups={k: len(v) for k, v in groups.items()})
    path, drift = drift_of('all', [])
    report['drift_alone'] = OrderedDict(
        (name, drift_of(name, [n for n in every_node if n not in set(nodes)])[1]) for name, nodes in groups.items())
    ranked = sorted(groups, key=lambda name: -report['drift_alone'][name]['drift'])
    report['steps'] = [OrderedDict(fp32_groups=[], drift=drift)]
    fp32_groups = []
    while drift['drift'] > tolerance and len(fp32_groups) < len(ranked):
        fp32_groups.append(ranked[len(fp32_groups)])
        path, drift = drift_of(f'fp32_{len(fp32_groups)}', [n for g in fp32_groups for n in groups[g]])
        report['steps'].append(OrderedDict(fp32_groups=list(fp32_groups), drift=drift))
    # in the graph's order, as GROUPS lists them
    report['fp32_groups'] = [name for name in groups if name in fp32_groups]
    report['fp32_nodes'] = [n for name in report['fp32_groups'] for n in groups[name]]
    report['final_file'], report['drift_final'] = path, drift
    return report
