"""Mask-RT-DETR head: routes the transformer outputs to the mask criterion (training) or the post-process (eval)."""
import paddle
import paddle.nn as nn
from ppdet.core.workspace import register

__all__ = ['RTDETRMaskHead']


@register
class RTDETRMaskHead(nn.Layer):
    """Parameter-free head of Mask-RT-DETR (the official ``MaskDINOHead`` role).

    Args:
        loss: injected criterion, called as the official ``MaskDINOLoss``:
            ``loss(boxes, logits, gt_bbox, gt_class, masks=, gt_mask=, dn_out_logits=, dn_out_bboxes=,
            dn_out_masks=, dn_meta=)``.

    forward(out_transformer, body_feats, inputs=None), out_transformer as `RTDETRMaskTransformer` returns:
        training: the criterion's loss dict, from
            boxes [L, b, n, 4] (sigmoid cxcywh), logits [L, b, n, k], masks [L, b, n, h4, w4] (mask logits at
            stride 4), stacked as [encoder top-k, initial queries (when denoising), decoder layer 0 .. last]: L =
            1 + 1 + num_decoder_layers with denoising, 1 + num_decoder_layers without;
            gt_bbox / gt_class: the inputs' lists (b tensors [g_i, 4] normalised cxcywh, [g_i, 1]);
            gt_mask: the inputs' `gt_segm` list (b tensors [g_i, H, W] of {0, 1} at the padded input size), cast
            to the masks' dtype;
            dn_out_boxes / dn_out_logits / dn_out_masks [1 + num_decoder_layers, b, num_dn, ...] ([initial,
            decoder layers]) and dn_meta (`dn_positive_idx`, `dn_num_group`, `dn_num_split`), or all None without
            denoising;
        eval: (boxes [b, n, 4], logits [b, n, k], masks [b, n, h4, w4]) of the eval decoder layer.
    """
    __inject__ = ['loss']

    def __init__(self, loss='RTDETRMaskCriterion'):
        super().__init__()
        self.loss = loss

    def forward(self, out_transformer, body_feats, inputs=None):
        dec_logits, dec_boxes, dec_masks, enc_out, init_out, dn_meta = out_transformer
        if not self.training:
            return dec_boxes[-1], dec_logits[-1], dec_masks[-1]
        if 'gt_segm' not in inputs:
            raise ValueError("Mask-RT-DETR training needs the 'gt_segm' masks in the batch: add Poly2Mask to the "
                             "TrainReader's sample_transforms")
        dn_boxes = dn_logits = dn_masks = None
        if dn_meta is not None:
            split = dn_meta['dn_num_split']
            # [n_dec, b, num_dn + n, ...] -> denoising part, matching part
            dn_boxes, dec_boxes = paddle.split(dec_boxes, split, axis=2)
            dn_logits, dec_logits = paddle.split(dec_logits, split, axis=2)
            dn_masks, dec_masks = paddle.split(dec_masks, split, axis=2)
            # the initial queries' predictions join both stacks as a layer before the first decoder layer
            init_parts = [paddle.split(x, split, axis=1) for x in init_out]  # (dn, matching) per output
            dn_logits, dn_boxes, dn_masks = [paddle.concat([part[0].unsqueeze(0), dn])
                                             for part, dn in zip(init_parts, (dn_logits, dn_boxes, dn_masks))]
            dec_logits, dec_boxes, dec_masks = [paddle.concat([part[1].unsqueeze(0), dec])
                                                for part, dec in zip(init_parts, (dec_logits, dec_boxes, dec_masks))]
        enc_logits, enc_boxes, enc_masks = enc_out
        boxes = paddle.concat([enc_boxes.unsqueeze(0), dec_boxes])
        logits = paddle.concat([enc_logits.unsqueeze(0), dec_logits])
        masks = paddle.concat([enc_masks.unsqueeze(0), dec_masks])
        gt_mask = [m.astype(masks.dtype) for m in inputs['gt_segm']]
        return self.loss(boxes, logits, inputs['gt_bbox'], inputs['gt_class'], masks=masks, gt_mask=gt_mask,
                         dn_out_logits=dn_logits, dn_out_bboxes=dn_boxes, dn_out_masks=dn_masks, dn_meta=dn_meta)
