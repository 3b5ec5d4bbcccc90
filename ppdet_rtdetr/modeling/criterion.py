"""RT-DETR training losses: varifocal class, L1 and IoU-family box losses, aux and denoising."""
import paddle
import paddle.distributed as dist
import paddle.nn.functional as F

from ppdet.core.workspace import register

from .box_ops import aligned_iou, cxcywh_to_xyxy
from .mal_loss import mal_loss

__all__ = ['RTDETRCriterion', 'mean_num_gts']

_BOX_LOSSES = ('giou', 'diou', 'ciou')
_CLASS_LOSSES = ('vfl', 'mal')
_LOSS_NAMES = ('class', 'bbox', 'giou')


def mean_num_gts(gt_bbox):
    """Number of gt boxes per data-parallel rank, the normaliser of every loss term.

    Each rank counts its own boxes, the counts are summed over ranks and divided by the world
    size, so that every rank divides by the same number (1 process: the local count).

    Args:
        gt_bbox (list[Tensor]): b tensors [n_i, 4].

    Returns:
        Tensor: float32 scalar (shape []), at least 1 so that empty batches do not divide by 0.
    """
    # paddle.full, not paddle.to_tensor, which leaks ~120 bytes of host memory per call in Paddle 3.3
    num_gts = paddle.full([], float(sum(int(g.shape[0]) for g in gt_bbox)), dtype='float32')
    world_size = dist.get_world_size()
    if world_size > 1:
        dist.all_reduce(num_gts)
        num_gts = num_gts / world_size
    return num_gts.clip(min=1.0)


def _fixed_dn_indices(dn_positive_idx, dn_num_group, gt_bbox):
    """Positive denoising query j of group g is a noisy copy of gt j: pair them, group-major."""
    indices = []
    for src, gt in zip(dn_positive_idx, gt_bbox):
        num_gt = int(gt.shape[0])
        tgt = paddle.arange(num_gt, dtype='int64').tile([dn_num_group])
        indices.append((src.astype('int64'), tgt))
    return indices


@register
class RTDETRCriterion(object):
    """Losses of RT-DETR / RT-DETRv2 (the official SetCriterion / ppdet DINOLoss role).

    Every prediction set (encoder top-k, each decoder layer) is matched to the gt by its own
    Hungarian match; denoising queries use the fixed match to the gt they were made from.

    Args:
        num_classes (int): k, number of foreground classes (sigmoid scores, no background).
        matcher (RTDETRHungarianMatcher): injected by ppdet's ``create``; pass an instance when
            constructing directly.
        loss_coeff (dict): weights of 'class', 'bbox' (L1) and 'giou' (the IoU-family loss).
        aux_loss (bool): add the ``*_aux`` losses of the non-final outputs.
        use_focal_loss (bool): must be True: RT-DETR's scores are per-class sigmoids.
        use_vfl (bool): varifocal class loss (target = IoU of the matched box); False uses the
            sigmoid focal loss (alpha 0.25, gamma 2) with one-hot targets.
        box_loss (str): 'giou', 'diou' or 'ciou': the ``1 - overlap`` loss. Its key stays
            ``loss_giou`` so logs and official configs keep their names.
        vfl_alpha (float): weight of the negatives in the varifocal loss.
        vfl_gamma (float): focusing exponent of the negatives in the varifocal loss.
        class_loss (str): 'vfl' (the official loss, with `use_vfl`) or 'mal', DEIM's Matchability-Aware Loss
            (``modeling/mal_loss.py``), which replaces the varifocal loss and needs ``use_vfl: True``.
        mal_gamma (float): exponent of the IoU target and of the negatives' weight in the MAL (DEIM: 1.5).
        mal_alpha (float|None): weight of the negatives in the MAL; None is 1 (DEIM's default).

    Call args:
        boxes (Tensor): [n_out, b, q, 4] sigmoid cxcywh; index 0 is the encoder top-k, then every
            decoder layer; the last one is the main prediction.
        logits (Tensor): [n_out, b, q, k] class logits, same order.
        gt_bbox (list[Tensor]): b tensors [n_i, 4], normalised cxcywh.
        gt_class (list[Tensor]): b integer tensors [n_i, 1].
        dn_out_bboxes (Tensor|None): [n_dec, b, n_dn, 4] denoising boxes (decoder layers only).
        dn_out_logits (Tensor|None): [n_dec, b, n_dn, k].
        dn_meta (dict|None): 'dn_positive_idx' (b int64 tensors [n_i * dn_num_group] of positive
            denoising query indices, group-major) and 'dn_num_group' (int).
        enc_agnostic (tuple|None): (boxes [b, n, 4], logits [b, n, 1]) of a class-agnostic encoder top-k
            (``query_select_method: agnostic``), given instead of a first entry of ``boxes`` / ``logits``.
            As in RT-DETRv2, its one score is trained as a single class that every gt belongs to; the match
            uses that class too. Its losses are added to the ``*_aux`` sums, as the encoder's are otherwise.

    Returns:
        dict[str, Tensor]: scalar (shape []) losses, already weighted by ``loss_coeff`` and
        divided by the number of gts: ``loss_{class,bbox,giou}`` (last output),
        ``loss_{class,bbox,giou}_aux`` (sum over the other outputs),
        ``loss_{class,bbox,giou}_dn`` (last denoising layer) and ``..._aux_dn`` (the others).
        Denoising keys are zeros when ``dn_meta`` is None. With no gt in the batch the box
        losses are 0 but still depend on ``boxes``, so every rank builds the same graph.
    """
    __shared__ = ['num_classes', 'use_focal_loss']
    __inject__ = ['matcher']
    # The varifocal weight alpha * p**gamma of the negatives is a constant here, as in the authors' RT-DETR
    # (PyTorch); PaddleDetection's varifocal_loss_with_logits lets the gradient through it (a subclass that
    # follows PaddleDetection's gradients sets True). The loss values are the same either way.
    vfl_weight_grad = False

    def __init__(self,
                 num_classes=80,
                 matcher='RTDETRHungarianMatcher',
                 loss_coeff={'class': 1, 'bbox': 5, 'giou': 2},
                 aux_loss=True,
                 use_focal_loss=True,
                 use_vfl=True,
                 box_loss='giou',
                 vfl_alpha=0.75,
                 vfl_gamma=2.0,
                 class_loss='vfl',
                 mal_gamma=1.5,
                 mal_alpha=None):
        if box_loss not in _BOX_LOSSES:
            raise ValueError(f"RTDETRCriterion: unknown box_loss '{box_loss}', "
                             f"expected one of {list(_BOX_LOSSES)}")
        if class_loss not in _CLASS_LOSSES:
            raise ValueError(f"RTDETRCriterion: unknown class_loss '{class_loss}', "
                             f"expected one of {list(_CLASS_LOSSES)}")
        if class_loss == 'mal' and not use_vfl:
            raise ValueError("RTDETRCriterion: class_loss 'mal' replaces the varifocal loss and needs "
                             "use_vfl: True (use_vfl: False selects the focal loss)")
        if not use_focal_loss:
            raise ValueError('RTDETRCriterion: use_focal_loss=False (softmax class scores) is not '
                             'supported; RT-DETR scores classes with sigmoids')
        self.num_classes = num_classes
        self.matcher = matcher
        # a copy: ppdet's create() may hand over the live global-config dict
        self.loss_coeff = dict(loss_coeff)
        self.aux_loss = aux_loss
        self.use_focal_loss = use_focal_loss
        self.use_vfl = use_vfl
        self.box_loss = box_loss
        self.vfl_alpha = vfl_alpha
        self.vfl_gamma = vfl_gamma
        self.class_loss = class_loss
        self.mal_gamma = mal_gamma
        self.mal_alpha = mal_alpha

    def _class_loss(self, logits, flat_idx, tgt_cls, matched_iou, num_gts):
        """logits [b, q, k]; matched pairs as flat query indices into b*q, their gt classes and the
        varifocal target of each pair (matched_iou [n_matched], no gradient; None without matches)."""
        bs, num_queries, k = logits.shape
        # [b*q] class per query, k = "no object" (dropped from the one-hot below)
        target_cls = paddle.full([bs * num_queries], k, dtype='int64')
        target_iou = paddle.zeros([bs * num_queries], dtype=logits.dtype)
        if flat_idx.shape[0] > 0:
            target_cls = paddle.scatter(target_cls, flat_idx, tgt_cls)
            if self.use_vfl:
                target_iou = paddle.scatter(target_iou, flat_idx, matched_iou.astype(logits.dtype))
        # [b*q] -> [b*q, k+1] -> [b, q, k]
        label = F.one_hot(target_cls, k + 1)[:, :k].reshape([bs, num_queries, k])
        label = label.astype(logits.dtype)
        if self.class_loss == 'mal':
            # [b*q] -> [b, q, 1]
            loss = mal_loss(logits, label, target_iou.reshape([bs, num_queries, 1]), self.mal_gamma,
                            self.mal_alpha)
        elif self.use_vfl:
            # [b*q] -> [b, q, 1]: the IoU sits at the matched class only
            score = target_iou.reshape([bs, num_queries, 1]) * label
            pred_score = F.sigmoid(logits)
            if not self.vfl_weight_grad:
                pred_score = pred_score.detach()
            weight = self.vfl_alpha * pred_score.pow(self.vfl_gamma) * (1 - label) + score
            loss = F.binary_cross_entropy_with_logits(logits, score, weight=weight, reduction='none')
            # sum / num_gts, reduced as PaddleDetection does (mean over queries, over num_gts / q): in float32
            # the official bits (tests/reference/mask_rtdetr_loss_ref.npz)
            return self.loss_coeff['class'] * (loss.mean(1).sum() / (num_gts / num_queries))
        else:
            loss = F.sigmoid_focal_loss(logits, label, alpha=0.25, gamma=2.0, reduction='sum')
        return self.loss_coeff['class'] * loss / num_gts

    def _box_losses(self, boxes, src_boxes, tgt_boxes, num_gts):
        if src_boxes is None:
            # no gt: zero, but still a function of boxes so the graph matches the other ranks
            zero = boxes.sum() * 0.
            return zero, zero
        loss_bbox = (src_boxes - tgt_boxes).abs().sum()
        overlap = aligned_iou(cxcywh_to_xyxy(src_boxes), cxcywh_to_xyxy(tgt_boxes), self.box_loss)
        loss_giou = (1 - overlap).sum()
        return (self.loss_coeff['bbox'] * loss_bbox / num_gts,
                self.loss_coeff['giou'] * loss_giou / num_gts)

    def _matched(self, boxes, gt_bbox, gt_class, indices):
        """Matched pairs of one prediction set boxes [b, q, 4]: (flat query indices into b*q [n_matched],
        predicted boxes [n_matched, 4], gt boxes, gt classes); the last three are None without any match."""
        num_queries = boxes.shape[1]
        flat_idx, tgt_boxes, tgt_cls = [], [], []
        for i, (src, tgt) in enumerate(indices):
            if src.shape[0] == 0:
                continue
            flat_idx.append(src + i * num_queries)
            tgt_boxes.append(paddle.gather(gt_bbox[i], tgt))
            tgt_cls.append(paddle.gather(gt_class[i].reshape([-1]), tgt).astype('int64'))
        if not flat_idx:
            return paddle.zeros([0], dtype='int64'), None, None, None
        flat_idx = paddle.concat(flat_idx)
        # [b, q, 4] -> [b*q, 4] -> [n_matched, 4]
        src_boxes = paddle.gather(boxes.flatten(0, 1), flat_idx)
        return flat_idx, src_boxes, paddle.concat(tgt_boxes).astype(boxes.dtype), paddle.concat(tgt_cls)

    @staticmethod
    def _box_iou(src_boxes, tgt_boxes):
        """IoU of matched boxes [n_matched, 4] cxcywh (the varifocal target), no gradient; None without matches."""
        if src_boxes is None:
            return None
        return aligned_iou(cxcywh_to_xyxy(src_boxes), cxcywh_to_xyxy(tgt_boxes), 'iou').detach()

    def _single_losses(self, boxes, logits, gt_bbox, gt_class, indices, num_gts):
        """Losses of one prediction set: boxes [b, q, 4], logits [b, q, k]; (class, bbox, giou)."""
        flat_idx, src_boxes, tgt_boxes, tgt_cls = self._matched(boxes, gt_bbox, gt_class, indices)
        matched_iou = self._box_iou(src_boxes, tgt_boxes) if self.use_vfl else None
        loss_class = self._class_loss(logits, flat_idx, tgt_cls, matched_iou, num_gts)
        loss_bbox, loss_giou = self._box_losses(boxes, src_boxes, tgt_boxes, num_gts)
        return loss_class, loss_bbox, loss_giou

    def _agnostic_encoder_losses(self, boxes, logits, gt_bbox, gt_class, num_gts):
        """(class, bbox, giou) of a class-agnostic prediction set: boxes [b, n, 4], logits [b, n, 1]."""
        # every gt is class 0 of the single score. The authors' code matches with the real classes, which
        # index past a 1-column score for any class > 0; the class-free gt is what their loss uses.
        gt_class = [paddle.zeros_like(c) for c in gt_class]
        indices = self.matcher(boxes, logits, gt_bbox, gt_class)
        return self._single_losses(boxes, logits, gt_bbox, gt_class, indices, num_gts)

    def _set_losses(self, boxes, logits, gt_bbox, gt_class, num_gts, suffix, fixed_indices=None):
        """Main (last) and summed aux (the others) losses of a stack [n, b, q, .] of predictions."""
        losses = {}
        per_output = []
        num_out = boxes.shape[0]
        for j in range(num_out):
            if j < num_out - 1 and not self.aux_loss:
                continue
            indices = fixed_indices
            if indices is None:
                indices = self.matcher(boxes[j], logits[j], gt_bbox, gt_class)
            per_output.append(
                self._single_losses(boxes[j], logits[j], gt_bbox, gt_class, indices, num_gts))
        main, aux = per_output[-1], per_output[:-1]
        for name, value in zip(_LOSS_NAMES, main):
            losses[f'loss_{name}{suffix}'] = value
        for n, name in enumerate(_LOSS_NAMES):
            key = f'loss_{name}_aux{suffix}'
            losses[key] = (paddle.add_n([a[n] for a in aux])
                           if aux else paddle.zeros([], dtype=boxes.dtype))
        return losses

    def __call__(self,
                 boxes,
                 logits,
                 gt_bbox,
                 gt_class,
                 dn_out_bboxes=None,
                 dn_out_logits=None,
                 dn_meta=None,
                 enc_agnostic=None):
        num_gts = mean_num_gts(gt_bbox).astype(logits.dtype)
        losses = self._set_losses(boxes, logits, gt_bbox, gt_class, num_gts, suffix='')
        if enc_agnostic is not None and self.aux_loss:
            enc = self._agnostic_encoder_losses(*enc_agnostic, gt_bbox, gt_class, num_gts)
            for name, value in zip(_LOSS_NAMES, enc):
                losses[f'loss_{name}_aux'] = losses[f'loss_{name}_aux'] + value
        if dn_meta is None:
            for name in _LOSS_NAMES:
                losses[f'loss_{name}_dn'] = paddle.zeros([], dtype=boxes.dtype)
                losses[f'loss_{name}_aux_dn'] = paddle.zeros([], dtype=boxes.dtype)
            return losses

        dn_num_group = dn_meta['dn_num_group']
        dn_indices = _fixed_dn_indices(dn_meta['dn_positive_idx'], dn_num_group, gt_bbox)
        losses.update(
            self._set_losses(dn_out_bboxes, dn_out_logits, gt_bbox, gt_class,
                             num_gts * dn_num_group, suffix='_dn', fixed_indices=dn_indices))
        return losses
