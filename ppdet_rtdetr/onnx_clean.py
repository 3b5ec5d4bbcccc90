"""Tidy paddle2onnx's ONNX file: one name per symbolic axis, no dead constants.

paddle2onnx 2.1.0 names every dynamic axis on its own (`DynamicDimension.0` .. `.6`: the batch of `image`,
`im_shape` and `scale_factor` are three different symbols, so a runtime or a reader cannot tell that they must
agree) and leaves constants that no node reads (onnxruntime folds the `Constant` nodes into initializers and
then prints one "Removing initializer ... not used by any node" warning for each: 35-41 per session). This
module renames the axes of the exported contract and drops what nothing reads; the computation is untouched.

Axis names (the contract of ppdet_rtdetr/export.py):
- `batch`: axis 0 of every input, of `bbox_num` [b] and of the raw outputs (boxes [b, n, 4], logits [b, n, k]);
- `height` / `width`: axes 2 / 3 of `image` when the export takes any size (fixed sizes stay numbers);
- `num_boxes`: axis 0 of `bbox` [b*K, 6] (K = num_top_queries rows per image; ONNX has no product of symbols);
- `mask_height` / `mask_width`: axes 1 / 2 of a Mask-RT-DETR export's `mask` [b*K, H, W] (the batch's largest
  original image size), whose axis 0 is `num_boxes` too.
"""
__all__ = ['BATCH', 'HEIGHT', 'WIDTH', 'NUM_BOXES', 'MASK_HEIGHT', 'MASK_WIDTH', 'contract_axis_names',
           'remove_dead_nodes', 'clean_onnx_model']

BATCH, HEIGHT, WIDTH, NUM_BOXES = 'batch', 'height', 'width', 'num_boxes'
MASK_HEIGHT, MASK_WIDTH = 'mask_height', 'mask_width'


def _subgraph_reads(node):
    """Every value name read inside the subgraphs of `node` (If / Loop bodies may read outer-scope values)."""
    names = set()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField('g') else []) + list(attr.graphs):
            for inner in sub.node:
                names.update(n for n in inner.input if n)
                names |= _subgraph_reads(inner)
    return names


def remove_dead_nodes(graph):
    """Drop, in place, the nodes of `graph` whose outputs nothing reads (transitively) and the initializers (and
    initializer-backed graph inputs) no node reads.

    Returns:
        (int, int): the number of nodes and of initializers removed.
    """
    needed = {o.name for o in graph.output}
    keep = []
    # the nodes are in topological order (an ONNX requirement): walking backwards sees every reader first
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed |= {n for n in node.input if n} | _subgraph_reads(node)
    removed_nodes = len(graph.node) - len(keep)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    unused = {i.name for i in graph.initializer} - needed
    kept_inits = [i for i in graph.initializer if i.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    # an initializer listed among the inputs is an overridable input to onnxruntime (and warned about); the
    # exported contract's inputs are only image / im_shape / scale_factor
    init_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names | unused]
    del graph.input[:]
    graph.input.extend(inputs)
    return removed_nodes, len(unused)


def contract_axis_names(input_names, raw, mask=False):
    """{value name: [axis name or None per axis]} for the exported contract's inputs and outputs.

    Args:
        input_names (list[str]): the graph's inputs (`image`, then `im_shape` / `scale_factor` unless raw).
        raw (bool): an exclude_post_process export (outputs boxes [b, n, 4] and logits [b, n, k]).
        mask (bool): a Mask-RT-DETR export: a third output, `mask` [b*K, H, W].
    Returns:
        dict: inputs by name, outputs by position ('output:0', 'output:1', 'output:2'); None keeps an axis as it is.
        Raises ValueError for an input that is not one of the contract's.
    """
    unknown = set(input_names) - ({'image'} if raw else {'image', 'im_shape', 'scale_factor'})
    if unknown:
        raise ValueError(f'ONNX inputs {sorted(unknown)} are not in the export contract '
                         f"({'image' if raw else 'image, im_shape, scale_factor'})")
    names = {name: [BATCH, None, HEIGHT, WIDTH] if name == 'image' else [BATCH, None] for name in input_names}
    names['output:0'] = [BATCH, None, None] if raw else [NUM_BOXES, None]
    names['output:1'] = [BATCH, None, None] if raw else [BATCH]
    if mask:
        names['output:2'] = [NUM_BOXES, MASK_HEIGHT, MASK_WIDTH]
    return names


def _rename_axes(value, axis_names, where):
    dims = value.type.tensor_type.shape.dim
    if len(dims) != len(axis_names):
        raise ValueError(f'{where} {value.name!r} has {len(dims)} axes, the export contract says {len(axis_names)}')
    for dim, name in zip(dims, axis_names):
        # a number stays a number (the baked H x W, the channels); only symbolic or unknown axes get the name
        if name is not None and not dim.HasField('dim_value'):
            dim.dim_param = name


def clean_onnx_model(model, raw, mask=False):
    """Rename the contract's symbolic axes and remove dead nodes / initializers of `model` (an onnx.ModelProto),
    in place.

    Args:
        raw (bool): the export has raw outputs (exclude_post_process in its infer_cfg.yml).
        mask (bool): a Mask-RT-DETR export (`mask: true` in its infer_cfg.yml): bbox, bbox_num and mask.
    Returns:
        the model. Raises ValueError naming the value when an input or output has another rank than the
        contract's, or the model lacks the contract's outputs.
    """
    graph = model.graph
    expected = '3 outputs (bbox, bbox_num, mask)' if mask else '2 outputs (bbox, bbox_num or boxes, logits)'
    if len(graph.output) != (3 if mask else 2):
        raise ValueError(f'the export contract has {expected}, the ONNX graph has {[o.name for o in graph.output]}')
    remove_dead_nodes(graph)
    names = contract_axis_names([i.name for i in graph.input], raw, mask)
    for value in graph.input:
        _rename_axes(value, names[value.name], 'input')
    for i, value in enumerate(graph.output):
        _rename_axes(value, names[f'output:{i}'], 'output')
    # value_info holds paddle2onnx's intermediate shapes, stale once the inputs' symbols change: drop them so that
    # shape inference derives every intermediate shape from the renamed inputs
    del graph.value_info[:]
    return model
