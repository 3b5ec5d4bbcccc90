"""Matchability-Aware Loss (MAL) of DEIM (Huang et al., "DEIM: DETR with Improved Matching for Fast
Convergence", CVPR 2025): a class loss for one-to-one matched DETRs, the alternative to the varifocal loss.

For a query matched to a gt of class c with IoU q between the two boxes, and p = sigmoid(logit):

    positive (the matched class):  BCE(logit, q ** gamma)           weight 1
    negative (every other entry):  BCE(logit, 0)                    weight alpha * p ** gamma

The varifocal loss instead weights a positive by q and targets q itself. With a low-IoU match (a box that
covers little of its object) VFL's weight q is small, so the model is barely taught anything about it; MAL
keeps the positive weight at 1 and lowers only the target, q ** gamma, so low-quality matches are still
learned from. DEIM pairs it with dense one-to-one matching (more, smaller targets per image), where such
low-IoU matches are frequent early in training.
"""
import paddle.nn.functional as F

__all__ = ['mal_loss']


def mal_loss(logits, label, iou, gamma=1.5, alpha=None):
    """Sum of the Matchability-Aware Loss over every query and class.

    Args:
        logits (Tensor): [b, q, k] class logits.
        label (Tensor): [b, q, k] one-hot of the matched class (all zeros for unmatched queries), logits' dtype.
        iou (Tensor): [b, q, 1] IoU of each query's box with its matched gt box (any value for unmatched
            queries: it only counts where `label` is 1). No gradient flows through it.
        gamma (float): exponent of the IoU target and of the negatives' focusing weight (DEIM: 1.5).
        alpha (float|None): weight of the negatives; None means 1 (DEIM's default, `mal_alpha: None`).

    Returns:
        Tensor: scalar (shape []), the unnormalised sum; the caller divides by the number of gts.
    """
    # [b, q, 1] * [b, q, k] -> [b, q, k]: q ** gamma at the matched class, 0 elsewhere
    target = iou.detach().pow(gamma) * label
    # the weight is a constant of the BCE, as in the varifocal loss: no gradient through the predicted score
    pred_score = F.sigmoid(logits).detach()
    negative = pred_score.pow(gamma) * (1 - label)
    if alpha is not None:
        negative = alpha * negative
    weight = negative + label
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction='sum')
