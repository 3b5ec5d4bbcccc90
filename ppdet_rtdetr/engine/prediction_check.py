"""Which training predictions of the transformer hold NaN / inf, and finite stand-ins for them.

``LossGuard`` reads the outputs of the model's ``transformer`` sub-layer at every training step, before the head
hands them to the Hungarian matcher, whose scipy solver would otherwise end the run with "matrix contains invalid
numeric entries" (a NaN cost) before any loss exists. The layout read is the training output of
``RTDETRDeformableTransformer``: ``(dec_bboxes [n_dec, b, num_dn + n, 4], dec_logits [n_dec, b, num_dn + n, k],
enc_topk_bboxes [b, n, 4], enc_topk_logits [b, n, k'], dn_meta dict or None)``.
"""
import numpy as np
import paddle

__all__ = ['all_finite', 'finite_copy', 'report']

_FLOATS = (paddle.float16, paddle.bfloat16, paddle.float32, paddle.float64)
_ENCODER_NAMES = ('enc_topk_bboxes', 'enc_topk_logits')


def _is_prediction(value):
    return isinstance(value, paddle.Tensor) and value.dtype in _FLOATS


def all_finite(outputs):
    """True when every floating-point tensor of ``outputs`` (a tuple) is finite: one device sync for all.

    The matcher copies its cost to the host right after this check, so on a GPU the sync costs no extra wait.
    """
    checks = [paddle.isfinite(t).all() for t in outputs if _is_prediction(t)]
    return not checks or bool(paddle.stack(checks).all())


def _named_parts(outputs):
    """(name, tensor) for every decoder layer's matching and denoising queries, the encoder top-k, and any
    further floating-point output of a transformer that returns more (by its position)."""
    dec_bboxes, dec_logits, enc_bboxes, enc_logits, dn_meta = outputs[:5]
    num_layers = dec_bboxes.shape[0]
    for kind, stack in (('bboxes', dec_bboxes), ('logits', dec_logits)):
        for i in range(num_layers):
            where = ' of decoder layer {} of {}'.format(i + 1, num_layers)
            dec = stack[i]  # [b, num_dn + n, .]
            if dn_meta is not None:
                dn, dec = paddle.split(dec, dn_meta['dn_num_split'], axis=1)
                yield 'dn_out_' + kind + where, dn
            yield 'dec_out_' + kind + where, dec
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

    What a skipped AMP step computes its (discarded) loss from: the matcher then sees only finite values.
    """
    return tuple(paddle.where(paddle.isfinite(t), t, paddle.zeros_like(t)) if _is_prediction(t) else t
                 for t in outputs)
