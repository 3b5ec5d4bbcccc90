"""Mask-RT-DETR training losses: RT-DETR's class and box losses plus mask BCE and dice on sampled points.

The official PaddleDetection ``MaskDINOLoss`` role (``configs/mask_rtdetr``), computing the same numbers: under
the same ``paddle.seed`` it draws the same random points, in the same order (see "Random draws" below).

Input contract (what the head passes; PaddleDetection's ``MaskDINOHead`` builds the same stacks):
    The transformer returns ``(dec_logits, dec_boxes, dec_masks, enc_out, init_out, dn_meta)`` in training:
    ``dec_*`` [n_dec, b, n_dn + q, .] (denoising queries first), ``enc_out = (logits [b, q, k], boxes [b, q, 4],
    masks [b, q, h, w])`` of the encoder top-k, ``init_out`` the same triple over [b, n_dn + q] for the
    mask-enhanced initial queries (or None), and ``dn_meta`` (None without denoising). The head splits every
    decoder tensor at ``dn_meta['dn_num_split'] = [n_dn, q]``, and stacks, first to last:
        matching part:  encoder top-k, initial queries (their matching part; only with denoising, as the
                        official head does), decoder layer 1 .. n_dec   -> n_out sets
        denoising part: initial queries (denoising part), decoder layer 1 .. n_dec   -> n_out_dn sets
    The last set of each stack is the main prediction; the others give the ``*_aux`` losses.
    ``gt_mask`` (the reader's ``gt_segm``) covers the same padded input extent as the predicted masks, which
    are at a stride (4 in Mask-RT-DETR) of it: points are read in normalised coordinates of that extent.

Where the official code (PaddleDetection develop, ``ppdet/modeling/losses/detr_loss.py``) fails, this one does
what it means; the numbers are the same wherever the official code runs (tests/reference/README.md):
    - a batch mixing images with and without gt: the official loss crashes gathering the matched masks (an empty
      image gives a [0, w] block next to [n, h, w] ones); here empty images simply contribute no match;
    - float64: the official losses end in float32 (a 0-D float64 sum over a [1] float32 ``num_gts`` stays
      float32 in Paddle 3), and an all-empty float64 batch fails; here every loss keeps the predictions' dtype;
    - its ``assert (cond, msg)`` checks nothing; here ``masks`` and ``gt_mask`` are required arguments, and the
      matcher raises a ValueError when ``with_mask`` is set and they are missing;
    - without gt the official box and mask losses are constants; here they are zeros that depend on the
      predictions (the same graph on every rank), and ``aux_loss: False`` gives zero ``*_aux`` keys rather
      than none.
"""
import paddle

from ppdet.core.workspace import register

from .criterion import RTDETRCriterion, _fixed_dn_indices, mean_num_gts
from .mask_ops import binary_mask_iou, dice_loss, point_bce_loss, point_sample, uncertain_points

__all__ = ['RTDETRMaskCriterion']

_LOSS_NAMES = ('class', 'bbox', 'giou', 'mask', 'dice')
_VFL_IOU_TYPES = ('bbox', 'mask')


def _check_gt_masks(gt_bbox, gt_mask, masks):
    """Refuses gt masks that do not pair with the gt boxes (shapes only: no device sync)."""
    if len(masks.shape) != 5:
        raise ValueError(f'RTDETRMaskCriterion: masks must be [n_out, b, q, h, w], got shape {list(masks.shape)}')
    if len(gt_mask) != len(gt_bbox):
        raise ValueError(f'RTDETRMaskCriterion: gt_mask (gt_segm) has {len(gt_mask)} images, gt_bbox {len(gt_bbox)}')
    sizes = set()
    for i, (box, mask) in enumerate(zip(gt_bbox, gt_mask)):
        if len(mask.shape) != 3 or mask.shape[0] != box.shape[0]:
            raise ValueError(f'RTDETRMaskCriterion: image {i} has {box.shape[0]} gt boxes but gt_mask (gt_segm) '
                             f'of shape {list(mask.shape)}; expected [{box.shape[0]}, H, W]')
        sizes.add(tuple(mask.shape[1:]))
    if len(sizes) > 1:
        raise ValueError(f'RTDETRMaskCriterion: gt masks of one batch must share [H, W] (the padded input size), '
                         f'got {sorted(sizes)}')


@register
class RTDETRMaskCriterion(RTDETRCriterion):
    """Losses of Mask-RT-DETR: varifocal class, L1 and GIoU box, point-sampled mask BCE and dice losses.

    Each prediction set (encoder top-k, initial queries, every decoder layer) is matched on its own by the
    injected matcher (with its mask costs); denoising sets use the fixed match to the gt they were made from.
    A matched mask is read at ``num_sample_points`` points chosen by ``uncertain_points`` (PointRend); the gt
    mask is read at the same points. Gradients are PaddleDetection's, including the one through the varifocal
    weight of the negatives (``vfl_weight_grad``), which RTDETRCriterion treats as a constant.

    Args:
        num_classes (int): k, number of foreground classes (sigmoid scores).
        matcher (RTDETRHungarianMatcher): injected; built with ``with_mask: True`` for the official model.
        loss_coeff (dict): weights of 'class', 'bbox' (L1), 'giou', 'mask' (BCE) and 'dice'.
        aux_loss (bool): add the ``*_aux`` losses of the non-final sets.
        use_focal_loss (bool): must be True (sigmoid class scores).
        use_vfl (bool): varifocal class loss; False uses the sigmoid focal loss.
        vfl_iou_type (str): varifocal target of the **main** sets (last matching and last denoising set):
            'mask', the IoU of the binarised masks (``mask_ops.binary_mask_iou``), or 'bbox', the box IoU.
            The aux sets always use the box IoU, as the official loss does.
        num_sample_points (int): p, points per matched mask (shared with the matcher through the global config).
        oversample_ratio (float): >= 1, uniform candidates per point.
        important_sample_ratio (float): in [0, 1], share of the points chosen by uncertainty.

    Call args:
        boxes (Tensor): [n_out, b, q, 4] sigmoid cxcywh, stacked as in the module docstring.
        logits (Tensor): [n_out, b, q, k] class logits.
        gt_bbox (list[Tensor]): b tensors [n_i, 4], normalised cxcywh.
        gt_class (list[Tensor]): b integer tensors [n_i, 1].
        masks (Tensor): [n_out, b, q, h, w] mask logits.
        gt_mask (list[Tensor]): b tensors [n_i, H, W] of {0, 1} (any dtype; cast to that of ``masks``), H and W
            the same for every image.
        dn_out_bboxes (Tensor|None): [n_out_dn, b, n_dn, 4].
        dn_out_logits (Tensor|None): [n_out_dn, b, n_dn, k].
        dn_out_masks (Tensor|None): [n_out_dn, b, n_dn, h, w].
        dn_meta (dict|None): 'dn_positive_idx' (b int64 tensors [n_i * dn_num_group], group-major) and
            'dn_num_group' (int).

    Returns:
        dict[str, Tensor]: scalar losses, weighted and divided by the number of gts (times ``dn_num_group`` for
        denoising): ``loss_{class,bbox,giou,mask,dice}`` (main set), ``..._aux`` (sum over the other sets),
        ``..._dn`` and ``..._aux_dn``; denoising keys are zeros when ``dn_meta`` is None. Without any gt in
        the batch the box and mask losses are 0 (still functions of the predictions, so every rank builds
        the same graph) and the class loss is the focal loss of all-negative targets (which is what the
        varifocal loss is then).

    Random draws (``paddle.rand``, default dtype), in the official order: for the main set, then each aux set
    in stack order, then the denoising main set and each denoising aux set: the matcher's points (matching
    sets only, when the batch has gt), then the uncertainty candidates and the fresh points of the matched
    masks (when the batch has gt).

    Raises:
        ValueError: at construction, naming the key, for a ``loss_coeff`` without 'mask' or 'dice', an unknown
            ``vfl_iou_type``, ``oversample_ratio`` < 1, ``important_sample_ratio`` outside [0, 1] or
            ``num_sample_points`` < 1 (and RTDETRCriterion's checks); at a call, naming the image, for gt masks
            whose count differs from the gt boxes' or whose [H, W] differ within the batch.
    """
    __shared__ = ['num_classes', 'use_focal_loss', 'num_sample_points']
    __inject__ = ['matcher']
    # Mask-RT-DETR exists only in PaddleDetection: its gradients too (through the varifocal weight)
    vfl_weight_grad = True

    def __init__(self,
                 num_classes=80,
                 matcher='RTDETRHungarianMatcher',
                 loss_coeff={'class': 4, 'bbox': 5, 'giou': 2, 'mask': 5, 'dice': 5},
                 aux_loss=True,
                 use_focal_loss=True,
                 use_vfl=True,
                 vfl_iou_type='mask',
                 num_sample_points=12544,
                 oversample_ratio=3.0,
                 important_sample_ratio=0.75):
        super().__init__(num_classes=num_classes, matcher=matcher, loss_coeff=loss_coeff, aux_loss=aux_loss,
                         use_focal_loss=use_focal_loss, use_vfl=use_vfl)
        missing = [k for k in _LOSS_NAMES if k not in self.loss_coeff]
        if missing:
            raise ValueError(f'RTDETRMaskCriterion: loss_coeff lacks {missing}, got {self.loss_coeff}')
        if vfl_iou_type not in _VFL_IOU_TYPES:
            raise ValueError(f"RTDETRMaskCriterion: unknown vfl_iou_type '{vfl_iou_type}', "
                             f"expected one of {list(_VFL_IOU_TYPES)}")
        if not oversample_ratio >= 1:
            raise ValueError(f'RTDETRMaskCriterion: oversample_ratio must be >= 1, got {oversample_ratio}')
        if not 0 <= important_sample_ratio <= 1:
            raise ValueError('RTDETRMaskCriterion: important_sample_ratio must be in [0, 1], '
                             f'got {important_sample_ratio}')
        if int(num_sample_points) < 1:
            raise ValueError(f'RTDETRMaskCriterion: num_sample_points must be >= 1, got {num_sample_points}')
        self.vfl_iou_type = vfl_iou_type
        self.num_sample_points = int(num_sample_points)
        self.oversample_ratio = oversample_ratio
        self.important_sample_ratio = important_sample_ratio

    @staticmethod
    def _matched_masks(masks, gt_mask, flat_idx, indices):
        """Matched predicted [n_matched, h, w] and gt [n_matched, H, W] masks, in the order of ``flat_idx``."""
        # [b, q, h, w] -> [b*q, h, w] -> [n_matched, h, w]
        src_masks = paddle.gather(masks.flatten(0, 1), flat_idx)
        tgt_masks = paddle.concat([paddle.gather(gt_mask[i], tgt) for i, (src, tgt) in enumerate(indices)
                                   if src.shape[0] > 0])
        return src_masks, tgt_masks

    def _mask_losses(self, src_masks, tgt_masks, num_gts):
        """(mask, dice) of matched masks, read at points chosen on the predictions (random draws here)."""
        points = uncertain_points(src_masks, self.num_sample_points, self.oversample_ratio,
                                  self.important_sample_ratio)
        # [n_matched, h, w] -> [n_matched, 1, p] -> [n_matched, p]
        src_at = point_sample(src_masks.unsqueeze(1), points)[:, 0]
        tgt_at = point_sample(tgt_masks.unsqueeze(1), points)[:, 0].detach()
        loss_mask = self.loss_coeff['mask'] * point_bce_loss(src_at, tgt_at).sum() / num_gts
        loss_dice = self.loss_coeff['dice'] * dice_loss(src_at, tgt_at).sum() / num_gts
        return loss_mask, loss_dice

    def _single_mask_losses(self, boxes, logits, masks, gt_bbox, gt_class, gt_mask, indices, num_gts, is_main):
        """(class, bbox, giou, mask, dice) of one set: boxes [b, q, 4], logits [b, q, k], masks [b, q, h, w]."""
        flat_idx, src_boxes, tgt_boxes, tgt_cls = self._matched(boxes, gt_bbox, gt_class, indices)
        matched_iou = None
        if src_boxes is None:
            # no gt: zero, but still a function of masks so the graph matches the other ranks
            loss_mask = loss_dice = masks.sum() * 0.
        else:
            src_masks, tgt_masks = self._matched_masks(masks, gt_mask, flat_idx, indices)
            if self.use_vfl:
                matched_iou = (binary_mask_iou(src_masks, tgt_masks) if is_main and self.vfl_iou_type == 'mask'
                               else self._box_iou(src_boxes, tgt_boxes))
            loss_mask, loss_dice = self._mask_losses(src_masks, tgt_masks, num_gts)
        loss_class = self._class_loss(logits, flat_idx, tgt_cls, matched_iou, num_gts)
        loss_bbox, loss_giou = self._box_losses(boxes, src_boxes, tgt_boxes, num_gts)
        return loss_class, loss_bbox, loss_giou, loss_mask, loss_dice

    def _mask_set_losses(self, boxes, logits, masks, gt_bbox, gt_class, gt_mask, num_gts, suffix,
                         fixed_indices=None):
        """Main (last) and summed aux (the others) losses of stacks [n, b, q, ...] of predictions."""
        num_out = boxes.shape[0]
        # the main set first, then the aux sets in order: the official order of the random draws
        order = [num_out - 1] + (list(range(num_out - 1)) if self.aux_loss else [])
        per_set = {}
        for j in order:
            indices = fixed_indices
            if indices is None:
                indices = self.matcher(boxes[j], logits[j], gt_bbox, gt_class, masks=masks[j], gt_mask=gt_mask)
            per_set[j] = self._single_mask_losses(boxes[j], logits[j], masks[j], gt_bbox, gt_class, gt_mask,
                                                  indices, num_gts, is_main=j == num_out - 1)
        losses = {}
        aux = [per_set[j] for j in order[1:]]
        for n, name in enumerate(_LOSS_NAMES):
            losses[f'loss_{name}{suffix}'] = per_set[num_out - 1][n]
            losses[f'loss_{name}_aux{suffix}'] = (paddle.add_n([a[n] for a in aux])
                                                  if aux else paddle.zeros([], dtype=boxes.dtype))
        return losses

    def __call__(self,
                 boxes,
                 logits,
                 gt_bbox,
                 gt_class,
                 masks,
                 gt_mask,
                 dn_out_bboxes=None,
                 dn_out_logits=None,
                 dn_out_masks=None,
                 dn_meta=None):
        _check_gt_masks(gt_bbox, gt_mask, masks)
        num_gts = mean_num_gts(gt_bbox).astype(logits.dtype)
        gt_mask = [m.astype(masks.dtype) for m in gt_mask]
        losses = self._mask_set_losses(boxes, logits, masks, gt_bbox, gt_class, gt_mask, num_gts, suffix='')
        if dn_meta is None:
            for name in list(losses):
                losses[f'{name}_dn'] = paddle.zeros([], dtype=boxes.dtype)
            return losses
        dn_num_group = dn_meta['dn_num_group']
        dn_indices = _fixed_dn_indices(dn_meta['dn_positive_idx'], dn_num_group, gt_bbox)
        losses.update(
            self._mask_set_losses(dn_out_bboxes, dn_out_logits, dn_out_masks, gt_bbox, gt_class, gt_mask,
                                  num_gts * dn_num_group, suffix='_dn', fixed_indices=dn_indices))
        return losses
