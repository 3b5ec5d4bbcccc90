"""RT-DETR head: routes transformer outputs to the criterion (training) or the post-process (eval)."""
import paddle
import paddle.nn as nn
from ppdet.core.workspace import register

__all__ = ['RTDETRHead']


@register
class RTDETRHead(nn.Layer):
    """Parameter-free head of RT-DETR (the official DINOHead role).

    Args:
        loss (RTDETRCriterion): injected criterion.

    forward(out_transformer, body_feats, inputs=None):
        training: splits the denoising queries off the decoder outputs, stacks the encoder top-k prediction
        in front of the decoder layers and returns the criterion's loss dict. With class-agnostic query
        selection the encoder scores are [b, n, 1], not [b, n, k]: they cannot join the stack and go to the
        criterion on their own (`enc_agnostic`), which scores them against class-free gt;
        eval: returns (boxes [b, n, 4] sigmoid cxcywh, logits [b, n, k], None) of the eval decoder layer.
    """
    __inject__ = ['loss']

    def __init__(self, loss='RTDETRCriterion'):
        super().__init__()
        self.loss = loss

    def forward(self, out_transformer, body_feats, inputs=None):
        dec_bboxes, dec_logits, enc_topk_bboxes, enc_topk_logits, dn_meta = out_transformer
        if not self.training:
            return dec_bboxes[-1], dec_logits[-1], None
        dn_bboxes = dn_logits = None
        if dn_meta is not None:
            # [n_dec, b, num_dn + n, .] -> denoising part, matching part
            dn_bboxes, dec_bboxes = paddle.split(dec_bboxes, dn_meta['dn_num_split'], axis=2)
            dn_logits, dec_logits = paddle.split(dec_logits, dn_meta['dn_num_split'], axis=2)
        if enc_topk_logits.shape[-1] != dec_logits.shape[-1]:
            # agnostic query selection (with k = 1 the stack below computes the same losses)
            return self.loss(dec_bboxes, dec_logits, inputs['gt_bbox'], inputs['gt_class'], dn_out_bboxes=dn_bboxes,
                             dn_out_logits=dn_logits, dn_meta=dn_meta, enc_agnostic=(enc_topk_bboxes, enc_topk_logits))
        # [n_dec, b, n, .] -> [1 + n_dec, b, n, .]: encoder top-k first, the last decoder layer last
        boxes = paddle.concat([enc_topk_bboxes.unsqueeze(0), dec_bboxes])
        logits = paddle.concat([enc_topk_logits.unsqueeze(0), dec_logits])
        return self.loss(boxes, logits, inputs['gt_bbox'], inputs['gt_class'], dn_out_bboxes=dn_bboxes,
                         dn_out_logits=dn_logits, dn_meta=dn_meta)
