"""RT-DETR and Mask-RT-DETR architecture: backbone -> hybrid encoder (neck) -> transformer -> head -> post-process."""
import paddle
from ppdet.core.workspace import create, register
from ppdet.modeling.architectures.meta_arch import BaseArch

__all__ = ['RTDETRDetector']


@register
class RTDETRDetector(BaseArch):
    """ppdet's DETR with a neck (paddledet 2.6.0's DETR has none), for boxes or boxes and masks.

    Args:
        backbone, neck, transformer, detr_head: built from the config (`from_config` wires out_shape).
        post_process (RTDETRPostProcess | RTDETRMaskPostProcess): injected.
        exclude_post_process (bool): eval/export returns the raw (boxes [b, n, 4] sigmoid cxcywh,
            logits [b, n, k]) instead of detections (as 'bbox' and 'bbox_num'; with_mask adds 'mask', the mask
            logits [b, n, h/4, w/4]).
        with_mask (bool): Mask-RT-DETR (`RTDETRMaskHybridEncoder`, `RTDETRMaskTransformer`, `RTDETRMaskHead`,
            `RTDETRMaskPostProcess`): eval also returns 'mask'.

    Training returns the loss dict plus `loss` (the sum of every entry); eval returns
    {'bbox': [b*K, 6] (class index, score, x1, y1, x2, y2), 'bbox_num': int32 [b]} and, with_mask,
    'mask': int32 [b*K, H, W] binary masks at the original image size (see `RTDETRMaskPostProcess`).
    """
    __category__ = 'architecture'
    __inject__ = ['post_process']
    __shared__ = ['exclude_post_process', 'with_mask']

    def __init__(self, backbone, neck, transformer, detr_head, post_process='RTDETRPostProcess',
                 exclude_post_process=False, with_mask=False):
        super().__init__()
        self.with_mask = with_mask
        self.backbone = backbone
        self.neck = neck
        self.transformer = transformer
        self.detr_head = detr_head
        self.post_process = post_process
        self.exclude_post_process = exclude_post_process

    @classmethod
    def from_config(cls, cfg, *args, **kwargs):
        backbone = create(cfg['backbone'])
        neck = create(cfg['neck'], input_shape=backbone.out_shape)
        transformer = create(cfg['transformer'], input_shape=neck.out_shape)
        detr_head = create(cfg['detr_head'])
        return {'backbone': backbone, 'neck': neck, 'transformer': transformer, 'detr_head': detr_head}

    def _forward(self):
        body_feats = self.neck(self.backbone(self.inputs))
        out_transformer = self.transformer(body_feats, None, self.inputs)
        if self.training:
            return self.detr_head(out_transformer, body_feats, self.inputs)
        preds = self.detr_head(out_transformer, body_feats)
        if self.exclude_post_process:
            return preds if self.with_mask else (preds[0], preds[1])
        # the official DETR passes `image[2:].shape` (a batch slice) as pad_shape: the input's (h, w) is meant
        bbox, bbox_num, mask = self.post_process(preds, self.inputs['im_shape'], self.inputs['scale_factor'],
                                                 self.inputs['image'].shape[2:])
        return (bbox, bbox_num, mask) if self.with_mask else (bbox, bbox_num)

    def get_loss(self):
        losses = self._forward()
        losses['loss'] = paddle.add_n([v for k, v in losses.items() if 'log' not in k])
        return losses

    def get_pred(self):
        # with exclude_post_process the keys carry the raw boxes and logits (ppdet's export contract)
        out = self._forward()
        pred = {'bbox': out[0], 'bbox_num': out[1]}
        if self.with_mask:
            pred['mask'] = out[2]
        return pred
