"""Static INT8 quantization of an exported RT-DETR ONNX file for onnxruntime's CPU kernels (QDQ format).

Settings, chosen for x86 CPUs with AVX512-VNNI / AVX-VNNI (whose int8 dot product multiplies unsigned 8-bit
activations by signed 8-bit weights): activations uint8 per tensor (asymmetric), weights int8 per output
channel (symmetric), `reduce_range` off (7-bit weights only avoid an overflow of the pre-VNNI AVX2
instruction). onnxruntime fuses each DequantizeLinear -> op -> QuantizeLinear into its QLinear kernel when it
loads the file, so the QDQ file is both portable and fast.

What is quantized (measured on R18vd at 640, onnxruntime 1.32, 2 threads; INT8 / float32 speed-up in brackets):
- every Conv and MatMul (x1.70 alone: > 99% of the FLOPs);
- in the convolutional parts (backbone, the encoder's CCFM) also the ops between convolutions (`REGION_OPS`:
  residual Adds, ReLU, SiLU's Sigmoid and Mul, upsampling copies, Concats, pooling), so that a feature map stays
  uint8 from one convolution to the next instead of being dequantized and quantized around every float32 Add
  (x1.90). Not elsewhere: the decoder's Adds and Muls see the inf of invalid anchors and the box arithmetic,
  and quantizing them there ruined the detections;
- MatMul outputs stay float32 (onnxruntime's MatMulIntegerToFloat: the scale is applied in the kernel), as the
  bias Add and attention that follow are float32: no separate dequantization of every [1, 8400, 256] value
  projection (x2.02).
GridSample, Softmax, LayerNorm, the sigmoid / top-k post-process and the position embedding stay float32. The
nodes are put in groups by where they sit in the graph (`node_groups`), so that whole parts can be kept in
float32 after a sensitivity sweep (`sensitivity.py`).
"""
import os
from collections import Counter, OrderedDict

import onnx

__all__ = ['QUANT_SETTINGS', 'REGION_OPS', 'GROUPS', 'prepare_model', 'node_groups', 'quantized_op_types',
           'quantize_model']

GROUPS = ('backbone', 'encoder_aifi', 'encoder_ccfm', 'query_selection', 'decoder_linear', 'decoder_attention')
# ops onnxruntime runs on uint8 tensors, quantized inside the convolutional parts only (see the module doc)
REGION_OPS = ('Relu', 'Add', 'Mul', 'Sigmoid', 'Concat', 'MaxPool', 'AveragePool', 'Resize', 'Transpose', 'Reshape',
              'Unsqueeze', 'Squeeze', 'Split', 'Slice')
QUANT_SETTINGS = OrderedDict([('format', 'onnxruntime QDQ'), ('op_types', ['Conv', 'MatMul']),
                              ('region_op_types', list(REGION_OPS)), ('matmul_output', 'float32'),
                              ('activations', 'uint8 per tensor, asymmetric'),
                              ('weights', 'int8 per channel, symmetric'), ('reduce_range', False)])


def prepare_model(src, dst):
    """onnxruntime's quantization pre-processing: BatchNorm folded into Conv, constants folded, shapes inferred.

    Without it each Conv would be quantized before a separate float BatchNormalization. The symbolic shape
    inference is skipped: it stops on paddle2onnx's graphs ("Incomplete symbolic shape inference"), and
    ONNX's own shape inference, which it runs anyway, is enough for the quantizer.
    """
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process
    ort.set_default_logger_severity(3)  # paddle2onnx leaves unused initializers, each one a warning
    quant_pre_process(src, dst, skip_symbolic_shape=True)
    return dst


def node_groups(model):
    """The nodes to quantize of an exported RT-DETR graph, grouped by the part of the model they are in.

    paddle2onnx names nodes by op type only (`Conv.12`), so the parts are told apart by the graph's
    (topological) order, which follows the model's forward: backbone convolutions (with the encoder's input
    projections), then the encoder's attention layer (the first MatMuls), the encoder's convolutional fusion
    (CCFM), then query selection (the MatMuls before the first TopK after the last Conv), then the decoder
    layers, whose MatMuls are either linear layers (a weight initializer as second input) or attention
    products (two activations). A `REGION_OPS` node belongs to 'backbone' or 'encoder_ccfm' when it lies between
    that part's first and last Conv and its first input is a float tensor (not a shape); elsewhere it is not
    quantized. The element types come from the shape inference `prepare_model` runs.

    Args:
        model (onnx.ModelProto|str): the (pre-processed) model or its path.
    Returns:
        OrderedDict group name (see GROUPS) -> list of node names. ValueError if the graph does not have the
        RT-DETR layout (no Conv, or no MatMul after the backbone).
    """
    if isinstance(model, str):
        model = onnx.load(model, load_external_data=False)
    nodes = list(model.graph.node)
    initializers = {i.name for i in model.graph.initializer}
    floats = {v.name for v in list(model.graph.value_info) + list(model.graph.input)
              if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    conv_at = [i for i, n in enumerate(nodes) if n.op_type == 'Conv']
    matmul_at = [i for i, n in enumerate(nodes) if n.op_type == 'MatMul']
    if not conv_at or not matmul_at or matmul_at[0] < conv_at[0]:
        raise ValueError('not an RT-DETR graph: expected backbone Conv nodes followed by MatMul nodes')
    first_matmul, last_conv = matmul_at[0], conv_at[-1]
    last_backbone_conv = max(i for i in conv_at if i < first_matmul)
    ccfm_start = next((i for i in conv_at if i > first_matmul), last_conv)
    selection_end = next((i for i, n in enumerate(nodes) if n.op_type == 'TopK' and i > last_conv), len(nodes))
    groups = OrderedDict((name, []) for name in GROUPS)
    for i, node in enumerate(nodes):
        if node.op_type == 'Conv':
            group = 'backbone' if i < first_matmul else 'encoder_ccfm'
        elif node.op_type in REGION_OPS:
            if node.input[0] not in floats:
                continue
            if conv_at[0] < i < last_backbone_conv:
                group = 'backbone'
            elif ccfm_start < i < last_conv:
                group = 'encoder_ccfm'
            else:
                continue
        elif node.op_type != 'MatMul':
            continue
        elif i < ccfm_start:
            group = 'encoder_aifi'
        elif i < selection_end:
            group = 'query_selection'
        else:
            group = 'decoder_linear' if node.input[1] in initializers else 'decoder_attention'
        groups[group].append(node.name)
    return groups


def quantized_op_types(model, fp32_nodes=()):
    """{op type: count} of the nodes `quantize_model` quantizes when `fp32_nodes` stay float32."""
    if isinstance(model, str):
        model = onnx.load(model, load_external_data=False)
    op_type = {n.name: n.op_type for n in model.graph.node}
    excluded = set(fp32_nodes)
    counts = Counter(op_type[n] for nodes in node_groups(model).values() for n in nodes if n not in excluded)
    return OrderedDict(sorted(counts.items()))


def quantize_model(prepared, dst, calibration_cache, reader=None, fp32_nodes=(), method='MinMax'):
    """Write the INT8 QDQ model of `prepared` (from `prepare_model`) to `dst`.

    Args:
        calibration_cache (str): JSON file of the calibrated tensor ranges. If it does not exist, `reader`
            is run through the model to measure them and the file is written; later calls reuse it, so that
            quantizing the same model with other `fp32_nodes` costs no new calibration.
        reader: an onnxruntime CalibrationDataReader (e.g. `ImageCalibrationReader`), rewound here.
        fp32_nodes (iterable of str): nodes of `node_groups` to keep in float32.
        method (str): 'MinMax', 'Entropy' or 'Percentile' (onnxruntime's CalibrationMethod names).
    Returns:
        str: dst.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    if not os.path.isfile(calibration_cache):
        if reader is None:
            raise ValueError(f'no calibration cache at {calibration_cache} and no calibration images given')
        reader.rewind()
    excluded = set(fp32_nodes)
    quantized = [n for nodes in node_groups(prepared).values() for n in nodes if n not in excluded]
    # the calibration covers every tensor of these op types, so one cache serves any set of float32 nodes
    quantize_static(prepared, dst, reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=QUANT_SETTINGS['op_types'] + list(REGION_OPS), nodes_to_quantize=quantized,
                    per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method),
                    calibration_cache_path=calibration_cache,
                    extra_options={'OpTypesToExcludeOutputQuantization': ['MatMul']})
    return dst
