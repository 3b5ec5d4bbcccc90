"""Mask-RT-DETR transformer: RT-DETR's query selection and decoder with shared heads, a mask query head and
mask-enhanced initial boxes (PaddleDetection develop, ppdet/modeling/transformers/mask_rtdetr_transformer.py).

What differs from `RTDETRDeformableTransformer`:
- one score head, one box head and a `dec_norm` LayerNorm shared by the encoder selection and every decoder layer
  (the official checkpoints have `score_head`, `bbox_head`, `dec_norm`, not per-layer heads);
- every prediction (encoder top-k, denoising/initial, decoder layers) reads the class logits and a mask query
  (`mask_query_head`, to `num_prototypes`) from dec_norm(query); mask logits = mask query . prototypes
  (the encoder's stride-4 `mask_feat`);
- mask-enhanced anchors: the decoder's initial boxes are the bounding boxes of the encoder top-k masks
  (logit > 0), computed in float32 whatever the model's dtype, as the official code does;
- non-contrastive denoising (`denoising.get_denoising_training_group`).

Call contract (official): ``transformer((enc_feats, mask_feat), pad_mask, inputs)`` returns
``(dec_logits, dec_boxes, dec_masks, enc_out, init_out, dn_meta)``:
    dec_logits [n_dec, b, q, k], dec_boxes [n_dec, b, q, 4] (sigmoid cxcywh), dec_masks [n_dec, b, q, h4, w4]
        (mask logits at stride 4), stacked over decoder layers: n_dec = num_decoder_layers in training, 1 (the
        `eval_idx` layer) in eval; q = num_dn + num_queries in training with denoising (denoising queries first),
        num_queries otherwise;
    enc_out = (logits [b, n, k], boxes [b, n, 4], masks [b, n, h4, w4]) of the n encoder top-k queries, in eval too;
    init_out = (logits [b, q, k], boxes [b, q, 4], masks [b, q, h4, w4]) of the decoder's input queries (denoising
        and matching, before the first layer) in training with denoising, else None;
    dn_meta = {'dn_positive_idx': list of b int64 [n_i * num_group], 'dn_num_group': int,
        'dn_num_split': [num_dn, num_queries]} in training with denoising, else None.
`RTDETRMaskHead` turns these into the criterion's inputs (see its docstring).
"""
import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import ParamAttr
from paddle.regularizer import L2Decay
from ppdet.core.workspace import register

from .anchors import AnchorsOfEvalSize
from .box_ops import inverse_sigmoid
from .decoder import TransformerDecoderLayer
from .denoising import additive_attn_mask, get_denoising_training_group
from .layers import MLP, broadcast_multiply
from .transformer import build_input_proj, encoder_memory

__all__ = ['RTDETRMaskTransformer', 'mask_to_box_cxcywh']


def mask_to_box_cxcywh(mask):
    """Bounding boxes of binary masks, normalised cxcywh in float32: bool [b, q, h, w] -> float32 [b, q, 4].

    A mask covering pixel columns x0..x1 and rows y0..y1 gets the box [x0, y0, x1 + 1, y1 + 1] / [w, h, w, h]
    (pixel edges); an empty mask gets all zeros. Float32 on purpose: the official code computes these boxes in
    float32 whatever the model's dtype, so a float64 model reproduces its numbers.
    """
    h, w = mask.shape[-2:]
    m = mask.astype('float32')
    cols = m.max(-2)  # [b, q, w]: 1 where a column holds a pixel of the mask
    rows = m.max(-1)  # [b, q, h]
    xs = paddle.arange(w, dtype='float32')
    ys = paddle.arange(h, dtype='float32')
    big = paddle.full([1], 1e8, 'float32')
    x0 = paddle.where(cols > 0, xs, big).min(-1)
    y0 = paddle.where(rows > 0, ys, big).min(-1)
    x1 = (cols * xs).max(-1) + 1
    y1 = (rows * ys).max(-1) + 1
    nonempty = cols.max(-1)  # [b, q]
    # normalised xyxy first, then cxcywh: the official order of the float32 operations
    x0, x1 = x0 * nonempty / w, x1 * nonempty / w
    y0, y1 = y0 * nonempty / h, y1 * nonempty / h
    return paddle.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


class _MaskDecoder(nn.Layer):
    """Decoder layers with iterative box refinement by the shared box head, and class + mask predictions.

    Args:
        num_layers (int), eval_idx (int): the layer whose prediction is the eval output (negative: from the end).
        layer_cfg (dict): `TransformerDecoderLayer` options.
    """

    def __init__(self, num_layers, eval_idx=-1, **layer_cfg):
        super().__init__()
        self.layers = nn.LayerList([TransformerDecoderLayer(**layer_cfg) for _ in range(num_layers)])
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx
        if not 0 <= self.eval_idx < num_layers:
            raise ValueError(f'eval_idx {eval_idx} is outside the {num_layers} decoder layers')

    def forward(self, tgt, ref_unact, memory, spatial_shapes, bbox_head, query_pos_head, predict, attn_mask=None,
                query_pos_head_inv_sig=False):
        """tgt [b, q, c], ref_unact [b, q, 4] (logit space), predict(query) -> (logits, masks)
        -> (boxes [n, b, q, 4], logits [n, b, q, k], masks [n, b, q, h4, w4]); n = num_layers in training, 1 in eval."""
        output = tgt
        dec_boxes, dec_logits, dec_masks = [], [], []
        ref_detach = F.sigmoid(ref_unact)
        ref = ref_detach
        for i, layer in enumerate(self.layers):
            query_pos = query_pos_head(inverse_sigmoid(ref_detach) if query_pos_head_inv_sig else ref_detach)
            # [b, q, 4] -> [b, q, 1, 4]: one reference box shared by all levels
            output = layer(output, ref_detach.unsqueeze(2), memory, spatial_shapes, attn_mask, query_pos)
            # the box head once: the official code calls it again on the same input for the undetached boxes
            delta_unact = bbox_head(output)
            inter_ref = F.sigmoid(delta_unact + inverse_sigmoid(ref_detach))
            if self.training or i == self.eval_idx:
                logits, masks = predict(output)
                dec_logits.append(logits)
                dec_masks.append(masks)
                # training: layer i > 0's boxes keep the gradient into layer i - 1's (DINO's look forward twice)
                dec_boxes.append(inter_ref if i == 0 or not self.training
                                 else F.sigmoid(delta_unact + inverse_sigmoid(ref)))
                if not self.training:
                    break
            ref = inter_ref
            ref_detach = inter_ref.detach() if self.training else inter_ref
        return paddle.stack(dec_boxes), paddle.stack(dec_logits), paddle.stack(dec_masks)


@register
class RTDETRMaskTransformer(AnchorsOfEvalSize, nn.Layer):
    """Mask-RT-DETR transformer (the official ``MaskRTDETR``'s names, options and numbers).

    Args:
        num_classes (int): k.
        hidden_dim (int): c.
        num_queries (int): n, queries selected from the encoder memory.
        position_embed_type (str): 'sine' or 'learned'; only checked, as in the official code (both build the
            same model).
        backbone_feat_channels (list[int]), feat_strides (list[int]): channels and strides of the encoder levels
            (from the neck's out_shape).
        num_prototypes (int): m, mask prototypes (the neck's `mask_feat` channels).
        num_levels (int): memory levels; extra levels come from stride-2 3x3 convs on the last one.
        num_decoder_points (int), nhead, num_decoder_layers, dim_feedforward, dropout, activation: decoder layers.
        num_denoising (int), label_noise_ratio (float), box_noise_scale (float): non-contrastive denoising.
        learnt_init_query (bool): learnt target embeddings instead of the selected memory features.
        query_pos_head_inv_sig (bool): the query position head reads logit-space boxes.
        mask_enhanced (bool): initial boxes from the encoder top-k masks instead of the encoder box head.
        eval_size (list[int]|None): [h, w] of eval/export inputs; anchors of that size are precomputed as
            non-persistable buffers.
        eval_idx (int): decoder layer whose prediction is the eval output (-1: the last).
        eps (float): anchors closer than eps to the image border are invalid.

    forward((enc_feats list of [b, c, h_i, w_i], mask_feat [b, m, h4, w4]), pad_mask=None, gt_meta=None (the
    inputs dict; training reads gt_class / gt_bbox)) -> see the module docstring.
    """
    __shared__ = ['num_classes', 'hidden_dim', 'eval_size', 'num_prototypes']

    def __init__(self, num_classes=80, hidden_dim=256, num_queries=300, position_embed_type='sine',
                 backbone_feat_channels=[512, 1024, 2048], feat_strides=[8, 16, 32], num_prototypes=32,
                 num_levels=3, num_decoder_points=4, nhead=8, num_decoder_layers=6, dim_feedforward=1024, dropout=0.,
                 activation='relu', num_denoising=100, label_noise_ratio=0.4, box_noise_scale=0.4,
                 learnt_init_query=False, query_pos_head_inv_sig=False, mask_enhanced=True, eval_size=None,
                 eval_idx=-1, eps=1e-2):
        super().__init__()
        if position_embed_type not in ('sine', 'learned'):
            raise ValueError(f"position_embed_type must be 'sine' or 'learned', got {position_embed_type!r}")
        if len(backbone_feat_channels) > num_levels or len(feat_strides) != len(backbone_feat_channels):
            raise ValueError(f'{len(backbone_feat_channels)} feature levels with strides {list(feat_strides)} do not '
                             f'fit num_levels={num_levels}')
        feat_strides = list(feat_strides)
        for _ in range(num_levels - len(feat_strides)):
            feat_strides.append(feat_strides[-1] * 2)
        self.num_classes, self.hidden_dim, self.num_queries = num_classes, hidden_dim, num_queries
        self.nhead, self.feat_strides, self.num_levels, self.eps = nhead, feat_strides, num_levels, eps
        self.num_denoising, self.label_noise_ratio, self.box_noise_scale = (
            num_denoising, label_noise_ratio, box_noise_scale)
        self.learnt_init_query, self.mask_enhanced = learnt_init_query, mask_enhanced
        self.query_pos_head_inv_sig = query_pos_head_inv_sig
        self.eval_size = list(eval_size) if eval_size else None

        self.input_proj = build_input_proj(list(backbone_feat_channels), hidden_dim, num_levels)
        self.decoder = _MaskDecoder(num_decoder_layers, eval_idx, d_model=hidden_dim, n_head=nhead,
                                    dim_feedforward=dim_feedforward, dropout=dropout, activation=activation,
                                    n_levels=num_levels, n_points=num_decoder_points)
        self.denoising_class_embed = nn.Embedding(
            num_classes, hidden_dim, weight_attr=ParamAttr(initializer=nn.initializer.Normal()))
        if learnt_init_query:
            self.tgt_embed = nn.Embedding(num_queries, hidden_dim)
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, num_layers=2)
        self.mask_query_head = MLP(hidden_dim, hidden_dim, num_prototypes, num_layers=3)
        no_decay = dict(weight_attr=ParamAttr(regularizer=L2Decay(0.0)), bias_attr=ParamAttr(regularizer=L2Decay(0.0)))
        self.enc_output = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim, **no_decay))
        self.dec_norm = nn.LayerNorm(hidden_dim, **no_decay)
        self.score_head = nn.Linear(hidden_dim, num_classes)
        self.bbox_head = MLP(hidden_dim, hidden_dim, 4, num_layers=3)
        self._reset_parameters()
        self._register_eval_anchors()

    def _reset_parameters(self):
        # the official initialisation: focal-loss prior 0.01 on the class bias, a zero last box layer
        bound = 1 / math.sqrt(self.score_head.weight.shape[0])
        nn.initializer.Uniform(-bound, bound)(self.score_head.weight)
        nn.initializer.Constant(-math.log((1 - 0.01) / 0.01))(self.score_head.bias)
        nn.initializer.Constant(0.)(self.bbox_head.layers[-1].weight)
        nn.initializer.Constant(0.)(self.bbox_head.layers[-1].bias)
        nn.initializer.XavierUniform()(self.enc_output[0].weight)
        bound = 1 / math.sqrt(self.enc_output[0].weight.shape[0])
        nn.initializer.Uniform(-bound, bound)(self.enc_output[0].bias)
        if self.learnt_init_query:
            nn.initializer.XavierUniform()(self.tgt_embed.weight)
        for layer in self.query_pos_head.layers:
            nn.initializer.XavierUniform()(layer.weight)
        for proj in self.input_proj:
            nn.initializer.XavierUniform()(proj.conv.weight)

    def _predict(self, query, mask_feat):
        """query [b, q, c], mask_feat [b, m, h4, w4] -> (logits [b, q, k], mask logits [b, q, h4, w4])."""
        out = self.dec_norm(query)
        mask_query = self.mask_query_head(out)  # [b, q, m]
        b, m, h, w = mask_feat.shape
        # [b, q, m] x [b, m, h*w] -> [b, q, h*w] -> [b, q, h, w]
        masks = paddle.bmm(mask_query, mask_feat.flatten(2)).reshape([b, -1, h, w])
        return self.score_head(out), masks

    def _get_decoder_input(self, memory, mask_feat, spatial_shapes, dn_embed=None, dn_bbox_unact=None):
        anchors, valid_mask = self._anchors(spatial_shapes, memory.dtype)
        # the official where(valid_mask, memory, 0) as a product (equal values; see RTDETRDeformableTransformer)
        output_memory = self.enc_output(broadcast_multiply(memory, valid_mask.astype(memory.dtype)))
        enc_logits = self.score_head(output_memory)  # [b, l, k]
        num_tokens = enc_logits.shape[1]
        if isinstance(num_tokens, int) and 0 <= num_tokens < self.num_queries:
            raise ValueError(f'the input is too small: its feature maps have {num_tokens} tokens, fewer than '
                             f'num_queries={self.num_queries}; use a larger input size or fewer queries')
        _, topk_ind = paddle.topk(enc_logits.max(-1), self.num_queries, axis=1)  # [b, n]

        # [b, l, c] -> [b, n, c], the selected tokens' rows
        target = paddle.take_along_axis(output_memory, topk_ind.unsqueeze(-1), axis=1)
        # the box head on the n selected rows only: each row is computed alone, so the values are those of the
        # official all-token head, and so are the gradients (only selected rows receive any)
        selected_anchors = paddle.gather(anchors[0], topk_ind.flatten()).reshape([-1, self.num_queries, 4])
        ref_unact = self.bbox_head(target) + selected_anchors  # [b, n, 4]
        enc_logits_topk, enc_masks = self._predict(target, mask_feat)
        enc_out = (enc_logits_topk, F.sigmoid(ref_unact), enc_masks)

        if self.learnt_init_query:
            target = self.tgt_embed.weight.unsqueeze(0).tile([memory.shape[0], 1, 1])
        else:
            target = target.detach()
        if self.mask_enhanced:
            # boxes and their logits in float32 (official), then the model's dtype for the decoder
            ref_unact = inverse_sigmoid(mask_to_box_cxcywh(enc_masks > 0)).astype(memory.dtype)
        if dn_embed is not None:
            target = paddle.concat([dn_embed, target], 1)
            ref_unact = paddle.concat([dn_bbox_unact.astype(memory.dtype), ref_unact], 1)
        init_out = None
        if self.training and dn_embed is not None:
            init_logits, init_masks = self._predict(target, mask_feat)
            init_out = (init_logits, F.sigmoid(ref_unact), init_masks)
        return target, ref_unact.detach(), enc_out, init_out

    def forward(self, feats, pad_mask=None, gt_meta=None):
        enc_feats, mask_feat = feats
        memory, spatial_shapes = encoder_memory(self.input_proj, enc_feats)
        dn_embed = dn_bbox_unact = attn_mask = dn_meta = None
        if self.training:
            dn_embed, dn_bbox_unact, attn_mask, dn_meta = get_denoising_training_group(
                gt_meta['gt_class'], gt_meta['gt_bbox'], self.num_classes, self.num_queries,
                self.denoising_class_embed.weight, self.num_denoising, self.label_noise_ratio,
                self.box_noise_scale)
        target, ref_unact, enc_out, init_out = self._get_decoder_input(
            memory, mask_feat, spatial_shapes, dn_embed, dn_bbox_unact)
        if attn_mask is not None:
            attn_mask = additive_attn_mask(attn_mask, memory.dtype)
        dec_boxes, dec_logits, dec_masks = self.decoder(
            target, ref_unact, memory, spatial_shapes, self.bbox_head, self.query_pos_head,
            lambda query: self._predict(query, mask_feat), attn_mask, self.query_pos_head_inv_sig)
        return dec_logits, dec_boxes, dec_masks, enc_out, init_out, dn_meta
