"""GFLOPs of one eval forward of a model, by top-level part, counted with forward hooks."""
import numpy as np

__all__ = ['count_gflops']


def count_gflops(model, inputs):
    """GFLOPs of one eval forward per top-level part (backbone, neck, transformer), a multiply-add counted as 2:
    Conv2D, Linear, and MultiHeadAttention's packed projections (F.linear, not a Linear layer) and matmuls.
    The deformable sampling, norms and activations are left out (< 1% of the total)."""
    import paddle
    from ppdet_rtdetr.modeling.layers import MultiHeadAttention
    totals = {}

    def conv(layer, inp, out):
        kh, kw = layer._kernel_size
        return 2 * int(np.prod(out.shape)) * layer._in_channels // layer._groups * kh * kw

    def linear(layer, inp, out):
        return 2 * int(np.prod(out.shape)) * layer.weight.shape[0]

    def attention(layer, inp, out):
        (b, lq, c), lk = inp[0].shape, inp[1].shape[1]
        return 2 * b * (lq + 2 * lk) * c * c + 2 * 2 * b * lq * lk * c  # q/k/v projections, qk^T and av

    counters = {paddle.nn.Conv2D: conv, paddle.nn.Linear: linear, MultiHeadAttention: attention}

    def hook(part, count):
        def add(layer, inp, out):
            totals[part] = totals.get(part, 0) + count(layer, inp, out)
        return add

    hooks = [layer.register_forward_post_hook(hook(name.split('.')[0], counters[type(layer)]))
             for name, layer in model.named_sublayers() if type(layer) in counters]
    with paddle.no_grad():
        model(inputs)
    for handle in hooks:
        handle.remove()
    return {part: flops / 1e9 for part, flops in totals.items()}
