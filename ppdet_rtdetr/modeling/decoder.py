"""RT-DETR decoder: self-attention over queries, deformable cross-attention, FFN; iterative box refinement.

RT-DETRv2 differs only in options of the cross-attention (per-level points, discrete sampler), so both
versions are this one file.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .box_ops import inverse_sigmoid
from .deformable_attn import MSDeformableAttention
from .layers import MultiHeadAttention, get_activation
from .query_distinct import cap_copies, drop_copies

__all__ = ['TransformerDecoderLayer', 'TransformerDecoder', 'clamp_fp16']

FP16_MAX = 65504.  # the largest finite float16


def clamp_fp16(x):
    """x clipped to [-65504, 65504] when it is float16 (AMP); any other dtype is returned as is.

    A float16 residual sum or FFN output that overflows becomes inf, and the next LayerNorm turns inf into
    NaN for every query (RT-DETR PR#464 clamps at the same places). Clipping keeps the value large and
    finite. The clip runs in float32 because CPU builds have no float16 clip kernel; +-65504 is exact in
    both types, so the result is the same as a float16 clip.
    """
    if x.dtype != paddle.float16:
        return x
    return paddle.clip(x.astype('float32'), -FP16_MAX, FP16_MAX).astype('float16')


class TransformerDecoderLayer(nn.Layer):
    """Post-norm decoder layer: self-attn (+ query position embedding) -> deformable cross-attn -> FFN.

    Args:
        d_model (int), n_head (int), dim_feedforward (int), dropout (float), activation (str).
        n_levels (int), n_points (int|list[int]), cross_attn_method (str), offset_scale (float),
        points_scale_in_state_dict (bool): see `MSDeformableAttention`.
    """

    def __init__(self, d_model=256, n_head=8, dim_feedforward=1024, dropout=0., activation='relu',
                 n_levels=3, n_points=4, cross_attn_method='default', offset_scale=0.5,
                 points_scale_in_state_dict=False):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_head, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, n_head, n_levels, n_points, cross_attn_method,
                                                offset_scale, points_scale_in_state_dict=points_scale_in_state_dict)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.activation = get_activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, tgt, ref_points, memory, spatial_shapes, attn_mask=None, query_pos_embed=None):
        """tgt [b, q, c], ref_points [b, q, 1, 4] (cxcywh in [0, 1]), memory [b, l, c],
        attn_mask None or float [q, q] (0 / -inf), query_pos_embed [b, q, c] -> [b, q, c]."""
        q = k = tgt + query_pos_embed
        tgt = self.norm1(clamp_fp16(tgt + self.dropout(self.self_attn(q, k, tgt, attn_mask))))
        cross = self.cross_attn(tgt + query_pos_embed, ref_points, memory, spatial_shapes)
        tgt = self.norm2(clamp_fp16(tgt + self.dropout(cross)))
        ffn = clamp_fp16(self.linear2(self.dropout(self.activation(self.linear1(tgt)))))
        return self.norm3(clamp_fp16(tgt + self.dropout(ffn)))


class TransformerDecoder(nn.Layer):
    """Stack of decoder layers with iterative box refinement.

    Each layer i predicts a box delta (logit space) on its input reference boxes; the refined boxes feed
    layer i + 1. In training every layer's output is returned (aux losses; the gradient reaches layer i's
    box head through the *undetached* previous boxes, as DINO's "look forward twice"); in eval the stack stops
    at `eval_idx`.

    With `distinct_iou` t > 0 (DDQ's distinct queries in the decoder), each layer's boxes drop the queries that
    repeat a better-scored live query's box by IoU > t (`query_distinct.drop_copies`), and every later layer's
    logits of a dropped query are capped (`cap_copies`): it is never output with a score, and the matcher
    assigns objects to the live queries. Layer 0's outputs are those of the distinct queries selected from the
    encoder; the last layer's own boxes drop nothing (as in DDQ).

    Args:
        num_layers (int), eval_idx (int): layer whose prediction is the output in eval (negative from the end).
        query_pos_head_inv_sig (bool): see `RTDETRDeformableTransformer`.
        distinct_iou (float): 0 (official): off; in (0, 1): the IoU above which a query is a copy.
        layer_cfg (dict): `TransformerDecoderLayer` options.
    """

    def __init__(self, num_layers, eval_idx=-1, query_pos_head_inv_sig=False, distinct_iou=0., **layer_cfg):
        super().__init__()
        self.distinct_iou = distinct_iou
        self.query_pos_head_inv_sig = query_pos_head_inv_sig  # query_pos_head reads logit-space boxes
        self.layers = nn.LayerList([TransformerDecoderLayer(**layer_cfg) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx
        if not 0 <= self.eval_idx < num_layers:
            raise ValueError(f'eval_idx {eval_idx} is outside the {num_layers} decoder layers')

    def forward(self, tgt, ref_points_unact, memory, spatial_shapes, bbox_head, score_head, query_pos_head,
                attn_mask=None, num_dn=0):
        """tgt [b, q, c], ref_points_unact [b, q, 4] (logit space), q = num_dn denoising queries + the matching
        ones -> (boxes [n, b, q, 4] sigmoid cxcywh, logits [n, b, q, k]); n = num_layers in training, 1 in eval."""
        output = tgt
        dec_bboxes, dec_logits = [], []
        alive = None  # bool [b, q - num_dn] with distinct_iou, once a layer has dropped copies
        ref_points_detach = F.sigmoid(ref_points_unact)
        ref_points = ref_points_detach
        for i, layer in enumerate(self.layers):
            query_pos_embed = query_pos_head(
                inverse_sigmoid(ref_points_detach) if self.query_pos_head_inv_sig else ref_points_detach)
            # [b, q, 4] -> [b, q, 1, 4]: one reference box shared by all levels
            output = layer(output, ref_points_detach.unsqueeze(2), memory, spatial_shapes, attn_mask,
                           query_pos_embed)
            # the box head runs once: the official code calls it a second time on the same input for the
            # undetached boxes below, which gives the same values and the same summed gradient
            delta_unact = bbox_head[i](output)
            inter_ref_bbox = F.sigmoid(delta_unact + inverse_sigmoid(ref_points_detach))
            logits = None
            if self.training or i == self.eval_idx:
                logits = score_head[i](output)
                dec_logits.append(logits if alive is None else cap_copies(logits, alive, num_dn))
            if self.training:
                if i == 0:
                    dec_bboxes.append(inter_ref_bbox)
                else:
                    dec_bboxes.append(F.sigmoid(delta_unact + inverse_sigmoid(ref_points)))
            elif i == self.eval_idx:
                dec_bboxes.append(inter_ref_bbox)
                break
            if self.distinct_iou and i < self.num_layers - 1:
                logits = score_head[i](output) if logits is None else logits  # [b, q, k]
                alive = drop_copies(logits[:, num_dn:].max(-1), inter_ref_bbox[:, num_dn:], self.distinct_iou, alive)
            ref_points = inter_ref_bbox
            ref_points_detach = inter_ref_bbox.detach() if self.training else inter_ref_bbox
        return paddle.stack(dec_bboxes), paddle.stack(dec_logits)
