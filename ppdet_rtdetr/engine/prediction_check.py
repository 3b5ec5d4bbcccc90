"""Which training predictions of the transformer hold NaN / inf, and finite stand-ins for them.

``LossGuard`` reads the outputs of the model's ``transformer`` sub-layer at every training step, before the head
hands them to the Hungarian matcher, whose scipy solver would otherwise end the run with "matrix contains invalid
numeric entries" (a NaN cost) before any loss exists. Two layouts are read, by position:

* ``RTDETRDeformableTransformer``: ``(dec_bboxes [n_dec, b, num_dn + n, 4], dec_logits [n_dec, b, num_dn + n, k],
  enc_topk_bboxes [b, n, 4], enc_topk_logits [b, n, k'], dn_meta dict or None)``;
* ``RTDETRMaskTransformer`` (told apart by its tuple in position 3): ``(dec_logits, dec_boxes, dec_masks
  [n_dec, b, num_dn + n, .], enc_out (logits, boxes, masks) [b, n, .], init_out (logits, boxes, masks)
  [b, num_dn + n, .] or None, dn_meta dict or None)``.
"""
import numpy as np
import paddle

__all__ = ['all_finite', 'finite_copy', 'report']

_FLOATS = (paddle.float16, paddle.bfloat16, paddle.float32, paddle.float64)
_ENCODER_NAMES = ('enc_topk_bboxes', 'enc_topk_logits')
_MASK_KINDS = ('logits', 'bboxes', 'masks')  # the order of each triple of RTDETRMaskTransformer


def _is_prediction(value):
    return isinstance(value, paddle.Tensor) and value.dtype in _FLOATS


def _predictions(outputs):
    """The floating-point tensors of ``outputs``, a tuple whose items may be tuples (the mask layout)."""
    for item in outputs:
        if isinstance(item, (tuple, list)):
            yield from _predictions(item)
        elif _is_prediction(item):
            yield item


def all_finite(outputs):
    """True when every floating-point tensor of ``outputs`` (a tuple) is finite: one device sync for all.

    The matcher copies its cost to the host right after this check, so on a GPU the sync costs no extra wait.
    """
    checks = [paddle.isfinite(t).all() for t in _predictions(outputs)]
    return not checks or bool(paddle.stack(checks).all())


def _is_mask_layout(outputs):
    return len(outputs) == 6 and isinstance(outputs[3], (tuple, list))


def _split_dn(name, where, tensor, dn_meta, axis):
    """('dn_out_' + name, denoising part), ('dec_out_' + name, matching part) of ``tensor`` split on ``axis``."""
    if dn_meta is not None:
        dn, tensor = paddle.split(tensor, dn_meta['dn_num_split'], axis=axis)
        yield 'dn_out_' + name + where, dn
    yield 'dec_out_' + name + where, tensor


def _named_mask_parts(outputs):
    """(name, tensor) of the mask layout: decoder layers, encoder top-k, initial queries."""
    dec_logits, dec_boxes, dec_masks, enc_out, init_out, dn_meta = outputs
    num_layers = dec_logits.shape[0]
    for kind, stack in zip(_MASK_KINDS, (dec_logits, dec_boxes, dec_masks)):
        for i in range(num_layers):
            yield from _split_dn(kind, ' of decoder layer {} of {}'.format(i + 1, num_layers), stack[i], dn_meta, 1)
    yield from (('enc_topk_' + kind, t) for kind, t in zip(_MASK_KINDS, enc_out))
    for kind, tensor in zip(_MASK_KINDS, init_out or ()):
        yield from _split_dn(kind, ' of the initial queries', tensor, dn_meta, 1)


def _named_parts(outputs):
    """(name, tensor) for every decoder layer's matching and denoising queries, the encoder top-k, and any
    further floating-point output of a transformer that returns more (by its position)."""
    if _is_mask_layout(outputs):
        yield from _named_mask_parts(outputs)
        return
    dec_bboxes, dec_logits, enc_bboxes, enc_logits, dn_meta = outputs[:5]
    num_layers = dec_bboxes.shape[0]
    for kind, stack in (('bboxes', dec_bboxes), ('logits', dec_logits)):
        for i in range(num_layers):
            # [b, num_dn + n, .]
            yield from _split_dn(kind, ' of decoder layer {} of {}'.format(i + 1, num_layers), stack[i], dn_meta, 1)
    yield from zip(_ENCODER_NAMES, (enc_bboxes, enc_logits))
    yield from (('transformer output {}'.format(i), t) for i, t in enumerate(outputs[5:], 5) if _is_prediction(t))


def report(outputs):
    """'dec_out_logits of decoder layer 2 of 6: 1200 of 4800 values NaN, 0 inf; ...' (the non-finite parts only).

    Args:
        outputs (tuple): the transformer's training output (module docstring).

    Returns:
        str: one entry per tensor part that is not finite, in output order; '' when all are finite.
    """
    entries = []
    for name, tensor in _named_parts(outputs):
        values = tensor.astype('float32').numpy()  # bfloat16 has no numpy dtype
        nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        if nan or inf:
            entries.append('{}: {} of {} values NaN, {} inf'.format(name, nan, values.size, inf))
    return '; '.join(entries)


def finite_copy(outputs):
    """``outputs`` with every NaN / inf value of its floating-point tensors replaced by 0 (still in the graph).

    What a skipped AMP step computes its (discarded) loss from: the matcher then sees only finite values. Nested
    tuples (the mask layout's) are copied the same way.
    """
    return tuple(finite_copy(t) if isinstance(t, (tuple, list))
                 else paddle.where(paddle.isfinite(t), t, paddle.zeros_like(t)) if _is_prediction(t) else t
                 for t in outputs)
