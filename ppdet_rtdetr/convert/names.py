"""The PyTorch RT-DETRv2 (lyuwenyu/RT-DETR, rtdetrv2_pytorch) -> ppdet_rtdetr name table.

This is the one place where upstream names live. The torch checkpoint layout: ``backbone.*`` (PResNet),
``encoder.*`` (HybridEncoder), ``decoder.*`` (RTDETRTransformerv2); ours: ``backbone.*`` (RTDETRResNet, ppdet's
ResNet names), ``neck.*`` (RTDETRHybridEncoder), ``transformer.*`` (RTDETRDeformableTransformer). Upstream names
of config keys: ``eval_spatial_size`` is our ``eval_size``, ``num_points`` our ``num_decoder_points``,
``cross_attn_method`` / ``query_select_method`` keep their names, ``num_layers`` is ``num_decoder_layers``.
"""
import re

__all__ = ['DROPPED', 'EMBEDDINGS', 'PADDED_EMBEDDINGS', 'blocks_per_stage', 'torch_to_paddle_name']

# torch entries with no counterpart: BN step counters, and buffers our model recomputes from eval_size
DROPPED = re.compile(r'(\.num_batches_tracked|^decoder\.anchors|^decoder\.valid_mask)$')

# 2-D weights that are nn.Embedding (rows = entries) in both frameworks; every other 2-D weight is a
# Linear, [out, in] in torch and [in, out] in Paddle, so it is transposed
EMBEDDINGS = re.compile(r'^decoder\.(denoising_class_embed|tgt_embed)\.weight$')

# torch's denoising label embedding has num_classes + 1 rows: the last one is its padding_idx entry,
# which no denoising query ever looks up
PADDED_EMBEDDINGS = re.compile(r'^decoder\.denoising_class_embed\.weight$')

# module paths, first match wins: (torch pattern, Paddle replacement)
_PATHS = [
    (r'^decoder\.decoder\.layers\.', 'transformer.decoder.layers.'),
    (r'^decoder\.enc_output\.proj\.', 'transformer.enc_output.0.'),
    (r'^decoder\.enc_output\.norm\.', 'transformer.enc_output.1.'),
    (r'^decoder\.', 'transformer.'),
    (r'^encoder\.input_proj\.(\d+)\.conv\.', r'neck.input_proj.\1.0.'),
    (r'^encoder\.input_proj\.(\d+)\.norm\.', r'neck.input_proj.\1.1.'),
    # ConvNormLayer / RepVggBlock of the CCFM: torch `.norm`, ppdet `.bn`
    (r'^encoder\.((?:lateral_convs|fpn_blocks|downsample_convs|pan_blocks)\..*)\.norm\.', r'neck.\1.bn.'),
    (r'^encoder\.', 'neck.'),
]
_LEAVES = [(r'\.running_mean$', '._mean'), (r'\.running_var$', '._variance')]
_BACKBONE_BLOCK = re.compile(r'^backbone\.res_layers\.(\d+)\.blocks\.(\d+)\.')


def _block_name(stage, index, count):
    """ppdet's ResNet block names: res{2..5}{a, b, ...}; a deep res4 (more than 10 blocks) is res4a, res4b1, ..."""
    if stage == 4 and count > 10:
        return 'res4a' if index == 0 else f'res4b{index}'
    return f'res{stage}{chr(ord("a") + index)}'


def blocks_per_stage(torch_names):
    """{stage index: number of blocks} of a torch PResNet, read from its state-dict names."""
    counts = {}
    for name in torch_names:
        m = _BACKBONE_BLOCK.match(name)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            counts[stage] = max(counts.get(stage, 0), block + 1)
    return counts


def torch_to_paddle_name(name, stage_blocks):
    """Paddle state-dict name of torch entry `name`; `stage_blocks` from `blocks_per_stage` (res4 naming)."""
    m = _BACKBONE_BLOCK.match(name)
    if m:
        stage = int(m.group(1)) + 2
        block = _block_name(stage, int(m.group(2)), stage_blocks[int(m.group(1))])
        name = f'backbone.res{stage}.{block}.' + name[m.end():]
    else:
        for pattern, repl in _PATHS:
            if re.match(pattern, name):
                name = re.sub(pattern, repl, name, count=1)
                break
    for pattern, repl in _LEAVES:
        name = re.sub(pattern, repl, name)
    return name
