"""Post-training INT8 quantization of exported RT-DETR models for CPU deployment (onnxruntime QDQ).

calibration.py: calibration images through the config's reader; ort_int8.py: the quantizer settings and the
node groups; sensitivity.py: detection drift and the per-group sweep; int8_folder.py: the deploy folder.
Needs onnxruntime (>= 1.31, for its calibration cache) and ml_dtypes: `pip install -e ".[onnx]"`.
"""
from .calibration import ConfigPreprocess, ImageCalibrationReader, dataset_image_paths, folder_image_paths, pick_evenly
from .int8_folder import quantize_export
from .ort_int8 import GROUPS, node_groups, prepare_model, quantize_model
from .sensitivity import detection_drift, sweep

__all__ = ['ConfigPreprocess', 'ImageCalibrationReader', 'dataset_image_paths', 'folder_image_paths', 'pick_evenly',
           'quantize_export', 'GROUPS', 'node_groups', 'prepare_model', 'quantize_model', 'detection_drift', 'sweep']
