"""RT-DETR transformer: input projection, IoU-aware query selection, denoising, decoder (v1 and v2)."""
import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import ParamAttr
from paddle.regularizer import L2Decay
from ppdet.core.workspace import register

from .anchors import AnchorsOfEvalSize
from .decoder import TransformerDecoder
from .denoising import additive_attn_mask, get_contrastive_denoising_training_group
from .layers import MLP, broadcast_multiply
from .query_distinct import select_distinct

__all__ = ['RTDETRDeformableTransformer', 'build_input_proj', 'encoder_memory']

QUERY_SELECT_METHODS = ('default', 'one2many', 'agnostic')


def build_input_proj(channels, hidden_dim, num_levels):
    """Projections of the encoder levels to `hidden_dim` (1x1 conv + BN); levels beyond `channels` come from 3x3
    stride-2 convs (on the last input level, then on the previous extra level). Official names `{i}.conv/.norm`."""
    input_proj = nn.LayerList()
    norm_attr = dict(weight_attr=ParamAttr(regularizer=L2Decay(0.0)), bias_attr=ParamAttr(regularizer=L2Decay(0.0)))
    for i in range(num_levels):
        ch_in, k, s = (channels[i], 1, 1) if i < len(channels) else (
            channels[-1] if i == len(channels) else hidden_dim, 3, 2)
        input_proj.append(nn.Sequential(
            ('conv', nn.Conv2D(ch_in, hidden_dim, k, s, padding=(k - 1) // 2, bias_attr=False)),
            ('norm', nn.BatchNorm2D(hidden_dim, **norm_attr))))
    return input_proj


def encoder_memory(input_proj, feats):
    """(memory [b, l, c], spatial_shapes [(h_i, w_i)]) of the projected levels, extra levels included."""
    proj = [input_proj[i](f) for i, f in enumerate(feats)]
    for i in range(len(feats), len(input_proj)):
        proj.append(input_proj[i](feats[-1] if i == len(feats) else proj[-1]))
    spatial_shapes = [tuple(p.shape[2:]) for p in proj]
    # [b, c, h, w] -> [b, h*w, c] per level, concatenated: [b, l, c]
    memory = paddle.concat([p.flatten(2).transpose([0, 2, 1]) for p in proj], axis=1)
    return memory, spatial_shapes


def _linear_init(layer, bias=None):
    bound = 1 / math.sqrt(layer.weight.shape[0])
    nn.initializer.Uniform(-bound, bound)(layer.weight)
    if bias is None:
        nn.initializer.Uniform(-bound, bound)(layer.bias)
    else:
        nn.initializer.Constant(bias)(layer.bias)


@register
class RTDETRDeformableTransformer(AnchorsOfEvalSize, nn.Layer):
    """RT-DETR / RT-DETRv2 transformer (everything after the hybrid encoder, before the loss).

    Args:
        num_classes (int): k.
        hidden_dim (int): c.
        num_queries (int): n, queries selected from the encoder memory.
        backbone_feat_channels (list[int]): channels of the encoder levels (from the neck's out_shape).
        feat_strides (list[int]): their strides.
        num_levels (int): nl memory levels; extra levels come from stride-2 3x3 convs on the last one.
        num_decoder_points (int|list[int]): sampling points per level; a list (RT-DETRv2) also keeps the
            `num_points_scale` buffer in the state dict, as RT-DETRv2 checkpoints do.
        nhead, num_decoder_layers, dim_feedforward, dropout, activation: decoder layer options.
        num_denoising (int), label_noise_ratio (float), box_noise_scale (float): contrastive denoising.
        learnt_init_query (bool): learnt target embeddings instead of the selected memory features.
        eval_size (list[int]|None): [h, w] of eval/export inputs; anchors of that size are precomputed as
            non-persistable buffers. Other sizes still work in dygraph (anchors are computed on the fly).
        eval_idx (int): decoder layer whose prediction is the eval output (-1: the last).
        eps (float): anchors closer than eps to the image border are invalid.
        cross_attn_method (str): 'default' (grid_sample) or 'discrete' (index gather, RT-DETRv2).
        offset_scale (float): deformable offset scale (0.5).
        query_select_method (str): 'default' (top-k of the max class score), 'one2many' (top-k over
            queries x classes), 'agnostic' (a single class-agnostic score).
        query_pos_head_inv_sig (bool): the query position head reads the reference boxes in logit space
            (inverse sigmoid) instead of sigmoid space (the official FocalNet-L RT-DETR sets it).
        query_distinct_iou (float): 0 (official): top-k of the scores. In (0, 1): distinct queries, a token whose
            encoder box overlaps a better-scored token's by more than this IoU is selected last
            (``query_distinct.select_distinct``); not with 'one2many'.
        decoder_distinct_iou (float): 0 (official): off. In (0, 1): distinct queries in the decoder too, a query
            whose box overlaps a better-scored live query's by more than this IoU after a layer is dropped from
            the later layers' outputs (``TransformerDecoder``'s `distinct_iou`); not with 'one2many'.

    forward(feats list of [b, c, h_i, w_i], pad_mask=None, gt_meta=None (inputs dict with gt_class / gt_bbox
    lists in training)) -> (dec_bboxes [n_dec, b, num_dn + n, 4] sigmoid cxcywh, dec_logits [n_dec, b, num_dn + n, k],
    enc_topk_bboxes [b, n, 4], enc_topk_logits [b, n, k'], dn_meta dict or None); n_dec = num_decoder_layers in
    training and 1 in eval, where the encoder outputs and dn_meta are None.
    """
    __shared__ = ['num_classes', 'hidden_dim', 'eval_size']

    def __init__(self, num_classes=80, hidden_dim=256, num_queries=300, backbone_feat_channels=[256, 256, 256],
                 feat_strides=[8, 16, 32], num_levels=3, num_decoder_points=4, nhead=8, num_decoder_layers=6,
                 dim_feedforward=1024, dropout=0., activation='relu', num_denoising=100, label_noise_ratio=0.5,
                 box_noise_scale=1.0, learnt_init_query=False, eval_size=None, eval_idx=-1, eps=1e-2,
                 cross_attn_method='default', offset_scale=0.5, query_select_method='default',
                 query_pos_head_inv_sig=False, query_distinct_iou=0., decoder_distinct_iou=0.):
        super().__init__()
        if query_select_method not in QUERY_SELECT_METHODS:
            raise ValueError(f"query_select_method '{query_select_method}' is not one of {QUERY_SELECT_METHODS}")
        for name, iou in (('query_distinct_iou', query_distinct_iou), ('decoder_distinct_iou', decoder_distinct_iou)):
            if iou and not 0 < iou < 1:
                raise ValueError(f'{name} must be 0 (off) or an IoU in (0, 1), got {iou}')
            if iou and query_select_method == 'one2many':
                raise ValueError(f"{name} keeps one query per box; query_select_method 'one2many' selects a token "
                                 "once per class")
        feat_strides = list(feat_strides)
        if len(backbone_feat_channels) > num_levels:
            raise ValueError(f'{len(backbone_feat_channels)} feature levels but num_levels={num_levels}')
        for _ in range(num_levels - len(feat_strides)):
            feat_strides.append(feat_strides[-1] * 2)
        self.num_classes, self.hidden_dim, self.num_queries = num_classes, hidden_dim, num_queries
        self.feat_strides, self.num_levels = feat_strides, num_levels
        self.num_denoising, self.label_noise_ratio, self.box_noise_scale = (
            num_denoising, label_noise_ratio, box_noise_scale)
        self.learnt_init_query, self.eps = learnt_init_query, eps
        self.eval_size = list(eval_size) if eval_size else None
        self.query_select_method, self.query_distinct_iou = query_select_method, query_distinct_iou

        self._build_input_proj(list(backbone_feat_channels))
        self.decoder = TransformerDecoder(
            num_decoder_layers, eval_idx, d_model=hidden_dim, n_head=nhead, dim_feedforward=dim_feedforward,
            dropout=dropout, activation=activation, n_levels=num_levels, n_points=num_decoder_points,
            cross_attn_method=cross_attn_method, offset_scale=offset_scale,
            points_scale_in_state_dict=isinstance(num_decoder_points, (list, tuple)),
            query_pos_head_inv_sig=query_pos_head_inv_sig, distinct_iou=decoder_distinct_iou)
        self.denoising_class_embed = nn.Embedding(
            num_classes, hidden_dim, weight_attr=ParamAttr(initializer=nn.initializer.Normal()))
        if learnt_init_query:
            self.tgt_embed = nn.Embedding(num_queries, hidden_dim)
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, num_layers=2)
        self.enc_output = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim),
            nn.LayerNorm(hidden_dim, weight_attr=ParamAttr(regularizer=L2Decay(0.0)),
                         bias_attr=ParamAttr(regularizer=L2Decay(0.0))))
        enc_classes = 1 if query_select_method == 'agnostic' else num_classes
        self.enc_score_head = nn.Linear(hidden_dim, enc_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, num_layers=3)
        self.dec_score_head = nn.LayerList([nn.Linear(hidden_dim, num_classes) for _ in range(num_decoder_layers)])
        self.dec_bbox_head = nn.LayerList([MLP(hidden_dim, hidden_dim, 4, num_layers=3)
                                           for _ in range(num_decoder_layers)])
        self._reset_parameters()
        self._register_eval_anchors()

    def _build_input_proj(self, channels):
        self.input_proj = build_input_proj(channels, self.hidden_dim, self.num_levels)

    def _reset_parameters(self):
        # class-score bias so that the initial foreground probability is 0.01 (focal-loss prior)
        bias_cls = -math.log((1 - 0.01) / 0.01)
        _linear_init(self.enc_score_head, bias_cls)
        for layer in [self.enc_bbox_head] + list(self.dec_bbox_head):
            nn.initializer.Constant(0.)(layer.layers[-1].weight)
            nn.initializer.Constant(0.)(layer.layers[-1].bias)
        for head in self.dec_score_head:
            _linear_init(head, bias_cls)
        _linear_init(self.enc_output[0])
        nn.initializer.XavierUniform()(self.enc_output[0].weight)
        if self.learnt_init_query:
            nn.initializer.XavierUniform()(self.tgt_embed.weight)
        for layer in self.query_pos_head.layers:
            nn.initializer.XavierUniform()(layer.weight)
        for proj in self.input_proj:
            nn.initializer.XavierUniform()(proj.conv.weight)

    def _get_encoder_input(self, feats):
        return encoder_memory(self.input_proj, feats)

    def _select_topk(self, enc_logits, enc_coord_unact=None):
        """Indices [b, n] of the selected memory tokens (`enc_coord_unact` [b, l, 4], the tokens' boxes in logit
        space, is read by query_distinct_iou only)."""
        num_tokens = enc_logits.shape[1]  # a shape tensor when a dynamic-size export traces this
        if isinstance(num_tokens, int) and 0 <= num_tokens < self.num_queries:
            raise ValueError(f'the input is too small: its feature maps have {num_tokens} tokens, fewer than '
                             f'num_queries={self.num_queries}; use a larger input size or fewer queries')
        if self.query_select_method == 'one2many':
            # top-k over tokens x classes; a token may be chosen once per class
            _, ind = paddle.topk(enc_logits.flatten(1), self.num_queries, axis=1)
            return ind // enc_logits.shape[-1]
        # default: the best class of each token; agnostic: its one score ([b, l, 1] -> [b, l] either way),
        # trained as one class that every gt belongs to (RTDETRCriterion's `enc_agnostic`)
        scores = enc_logits.max(-1)
        if self.query_distinct_iou:
            return select_distinct(scores, F.sigmoid(enc_coord_unact), self.num_queries, self.query_distinct_iou)
        _, ind = paddle.topk(scores, self.num_queries, axis=1)
        return ind

    def _get_decoder_input(self, memory, spatial_shapes, dn_embed=None, dn_bbox_unact=None):
        anchors, valid_mask = self._anchors(spatial_shapes, memory.dtype)
        # the official where(valid_mask, memory, 0) as a product: equal values (a masked row of -0.0 still gives
        # enc_output's bias), but onnxruntime ran the where and its broadcasts in 10 ms of R18vd's 190 (INT8)
        memory = broadcast_multiply(memory, valid_mask.astype(memory.dtype))
        output_memory = self.enc_output(memory)
        enc_logits = self.enc_score_head(output_memory)  # [b, l, k']

        def take(x):  # [b, l, d] -> [b, n, d], the selected tokens' rows
            return paddle.take_along_axis(x, topk_ind.unsqueeze(-1), axis=1)

        if self.training or self.query_distinct_iou:
            # training as the official code (its gradients), and a selection that reads every token's box
            enc_coord_unact = self.enc_bbox_head(output_memory) + anchors  # [b, l, 4]
            topk_ind = self._select_topk(enc_logits, enc_coord_unact)  # [b, n]
            ref_unact = take(enc_coord_unact)
        else:
            # inference needs the boxes of the n selected tokens only: the box head on n rows, not l (R18vd at
            # 640: 2.2 of 60.5 GFLOP). Each row is computed alone, so the boxes are bit-equal to those of the
            # official all-token head (tested in dygraph; exports agree within their tolerance)
            topk_ind = self._select_topk(enc_logits)  # [b, n]
            # anchors [1, l, 4] are every image's: rows [b*n, 4] by the flat index (take_along_axis does not
            # broadcast a batch of 1 in Paddle Inference)
            selected_anchors = paddle.gather(anchors[0], topk_ind.flatten()).reshape([-1, self.num_queries, 4])
            ref_unact = self.enc_bbox_head(take(output_memory)) + selected_anchors  # [b, n, 4]
        enc_topk_bboxes = F.sigmoid(ref_unact)
        enc_topk_logits = take(enc_logits)  # [b, n, k']
        if self.learnt_init_query:
            target = self.tgt_embed.weight.unsqueeze(0).tile([memory.shape[0], 1, 1])
        else:
            target = take(output_memory)  # [b, n, c]
            if self.training:
                target = target.detach()
        if self.training:
            ref_unact = ref_unact.detach()
        if dn_embed is not None:
            ref_unact = paddle.concat([dn_bbox_unact, ref_unact], 1)
            target = paddle.concat([dn_embed, target], 1)
        return target, ref_unact, enc_topk_bboxes, enc_topk_logits

    def forward(self, feats, pad_mask=None, gt_meta=None):
        memory, spatial_shapes = self._get_encoder_input(feats)
        dn_embed = dn_bbox_unact = attn_mask = dn_meta = None
        if self.training:
            dn_embed, dn_bbox_unact, attn_mask, dn_meta = get_contrastive_denoising_training_group(
                gt_meta['gt_class'], gt_meta['gt_bbox'], self.num_classes, self.num_queries,
                self.denoising_class_embed.weight, self.num_denoising, self.label_noise_ratio,
                self.box_noise_scale)
        target, ref_unact, enc_topk_bboxes, enc_topk_logits = self._get_decoder_input(
            memory, spatial_shapes, dn_embed, dn_bbox_unact)
        if attn_mask is not None:
            attn_mask = additive_attn_mask(attn_mask, memory.dtype)
        dec_bboxes, dec_logits = self.decoder(target, ref_unact, memory, spatial_shapes, self.dec_bbox_head,
                                              self.dec_score_head, self.query_pos_head, attn_mask,
                                              dn_meta['dn_num_split'][0] if dn_meta else 0)
        if not self.training:
            return dec_bboxes, dec_logits, None, None, None
        return dec_bboxes, dec_logits, enc_topk_bboxes, enc_topk_logits, dn_meta
