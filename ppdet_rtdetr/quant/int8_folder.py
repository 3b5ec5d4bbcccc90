"""An INT8 deploy folder from an exported one: model.onnx quantized, infer_cfg.yml saying what the file is.

The output folder holds only `model.onnx` (INT8 QDQ), `infer_cfg.yml` (the export's, plus a `quantization`
section) and `quant_report.json` (the sensitivity sweep): deploy/onnxruntime/infer.py runs it unchanged,
and no float32 Paddle model sits beside it to be mistaken for the INT8 one.
"""
import json
import os
import shutil
import tempfile
from collections import OrderedDict

import yaml

from ..export import write_infer_cfg
from .ort_int8 import GROUPS, QUANT_SETTINGS, node_groups, prepare_model, quantize_model, quantized_op_types
from .sensitivity import OrtRunner, detection_drift, sweep

__all__ = ['quantize_export']


def _read_infer_cfg(model_dir):
    path = os.path.join(model_dir, 'infer_cfg.yml')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} not found: export the model with tools/export_model.py first')
    with open(path) as f:
        return yaml.safe_load(f)


def quantize_export(model_dir, output_dir, reader, calibration_source, fp32_groups=None, tolerance=0.05,
                    method='MinMax', threads=1, log=print):
    """Quantize `model_dir/model.onnx` to INT8 into `output_dir`.

    Args:
        model_dir (str): an exported folder with infer_cfg.yml and model.onnx (tools/export_model.py --onnx).
        output_dir (str): created; must not be model_dir (the float32 model stays where it is).
        reader (ImageCalibrationReader): the calibration images, already preprocessed.
        calibration_source (str): where the images came from, written to infer_cfg.yml.
        fp32_groups (list[str]|None): groups (ort_int8.GROUPS) to keep in float32; None runs the sensitivity
            sweep (sensitivity.sweep), which keeps the fewest groups in float32 for a drift <= `tolerance`.
        method (str): calibration method ('MinMax', 'Entropy', 'Percentile').
    Returns:
        dict: the `quantization` section written to infer_cfg.yml.
    """
    src = os.path.join(model_dir, 'model.onnx')
    if not os.path.isfile(src):
        raise FileNotFoundError(f'{src} not found: convert it first with tools/export_onnx.py --model_dir {model_dir}')
    if os.path.abspath(output_dir) == os.path.abspath(model_dir):
        raise ValueError(f'--output_dir must differ from --model_dir ({model_dir}): the float32 export is kept')
    unknown = sorted(set(fp32_groups or []) - set(GROUPS))
    if unknown:
        raise ValueError(f'unknown fp32 group(s) {unknown}; the groups are {list(GROUPS)}')
    infer_cfg = _read_infer_cfg(model_dir)
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='rtdetr_int8_') as work_dir:
        prepared = prepare_model(src, os.path.join(work_dir, 'prepared.onnx'))
        cache = os.path.join(work_dir, 'calibration.json')
        if fp32_groups is None:
            report = sweep(prepared, cache, reader, work_dir, tolerance, threads=threads, method=method, log=log)
            final = report.pop('final_file')
        else:
            groups = node_groups(prepared)
            fp32_nodes = [n for name in fp32_groups for n in groups[name]]
            final = quantize_model(prepared, os.path.join(work_dir, 'final.onnx'), cache, reader, fp32_nodes,
                                   method)
            ref = OrtRunner(prepared, threads)(reader.feeds)
            report = OrderedDict(groups={k: len(v) for k, v in groups.items()}, fp32_groups=list(fp32_groups),
                                 fp32_nodes=fp32_nodes,
                                 drift_final=detection_drift(ref, OrtRunner(final, threads)(reader.feeds)))
        report['quantized_op_types'] = quantized_op_types(prepared, report['fp32_nodes'])
        shutil.copyfile(final, os.path.join(output_dir, 'model.onnx'))
    section = OrderedDict([('precision', 'int8'), ('engine', 'onnxruntime')])
    section.update(QUANT_SETTINGS)
    section['calibration'] = OrderedDict([('images', len(reader)), ('source', calibration_source),
                                          ('method', method)])
    section['fp32_groups'] = report['fp32_groups']
    section['fp32_nodes'] = len(report['fp32_nodes'])
    section['drift_on_calibration_images'] = dict(report['drift_final'])
    section['source_model'] = os.path.abspath(src)
    infer_cfg['quantization'] = section
    write_infer_cfg(infer_cfg, os.path.join(output_dir, 'infer_cfg.yml'))
    with open(os.path.join(output_dir, 'quant_report.json'), 'w') as f:
        json.dump(report, f, indent=1)
    log(f"INT8 model written to {output_dir} (float32 groups: {report['fp32_groups'] or 'none'})")
    return section
