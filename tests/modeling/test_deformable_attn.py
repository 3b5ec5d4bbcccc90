"""Multi-scale deformable attention: grid_sample path vs an explicit bilinear loop, forward and gradient."""
import numpy as np
import paddle

from ppdet_rtdetr.modeling.deformable_attn import ms_deform_attn_core


def _bilinear(img, x, y):
    """img [c, h, w]; x, y pixel coordinates with pixel centres at i + 0.5 (align_corners=False), zero outside."""
    c, h, w = img.shape
    u, v = x - 0.5, y - 0.5
    x0, y0 = int(np.floor(u)), int(np.floor(v))
    out = np.zeros(c)
    for yy, wy in ((y0, 1 - (v - y0)), (y0 + 1, v - y0)):
        for xx, wx in ((x0, 1 - (u - x0)), (x0 + 1, u - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wx * wy * img[:, yy, xx]
    return out


def _slow_reference(value, shapes, locs, weights, points):
    """Explicit loops over batch, query, head, level, point."""
    b, _, nh, hc = value.shape
    q = locs.shape[1]
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    out = np.zeros((b, q, nh * hc))
    for bi in range(b):
        for qi in range(q):
            for hi in range(nh):
                acc = np.zeros(hc)
                p = 0
                for lvl, (h, w) in enumerate(shapes):
                    img = value[bi, starts[lvl]:starts[lvl + 1], hi].T.reshape(hc, h, w)
                    for _ in range(points[lvl]):
                        x, y = locs[bi, qi, hi, p]
                        acc += weights[bi, qi, hi, p] * _bilinear(img, x * w, y * h)
                        p += 1
                out[bi, qi, hi * hc:(hi + 1) * hc] = acc
    return out


def _inputs(points, shapes=((5, 7), (3, 4), (1, 3)), b=2, q=3, nh=2, hc=3, seed=0):
    rng = np.random.default_rng(seed)
    l = sum(h * w for h, w in shapes)
    value = rng.standard_normal((b, l, nh, hc))
    # locations partly outside [0, 1] to exercise the zero padding
    locs = rng.uniform(-0.1, 1.1, (b, q, nh, sum(points), 2))
    weights = rng.uniform(0, 1, (b, q, nh, sum(points)))
    return value, list(shapes), locs, weights


def test_grid_sample_path_equals_bilinear_loop_odd_sizes():
    for points in ([2, 2, 2], [3, 1, 2]):
        value, shapes, locs, weights = _inputs(points)
        got = ms_deform_attn_core(paddle.to_tensor(value), shapes, paddle.to_tensor(locs),
                                  paddle.to_tensor(weights), points).numpy()
        want = _slow_reference(value, shapes, locs, weights, points)
        err = np.abs(got - want).max()
        assert err < 1e-9, f'points {points}: max error {err}'


def test_gradients_equal_finite_differences_of_the_loop():
    points = [2, 1, 1]
    value, shapes, locs, weights = _inputs(points, b=1, q=2, seed=1)
    v = paddle.to_tensor(value, stop_gradient=False)
    p = paddle.to_tensor(locs, stop_gradient=False)
    w = paddle.to_tensor(weights, stop_gradient=False)
    cot = np.random.default_rng(2).standard_normal((1, 2, 6))
    (ms_deform_attn_core(v, shapes, p, w, points) * paddle.to_tensor(cot)).sum().backward()

    def f(value_, locs_, weights_):
        return (_slow_reference(value_, shapes, locs_, weights_, points) * cot).sum()

    eps = 1e-6
    base = (value, locs, weights)
    for idx, (name, grad) in enumerate((('value', v.grad.numpy()), ('locations', p.grad.numpy()),
                                        ('weights', w.grad.numpy()))):
        flat = base[idx].reshape(-1)
        for i in np.random.default_rng(3).choice(flat.size, 12, replace=False):
            shifted = []
            for sign in (1, -1):
                arr = flat.copy()
                arr[i] += sign * eps
                args = list(base)
                args[idx] = arr.reshape(base[idx].shape)
                shifted.append(f(*args))
            num = (shifted[0] - shifted[1]) / (2 * eps)
            assert abs(num - grad.reshape(-1)[i]) < 1e-5, f'{name}[{i}]: autograd {grad.reshape(-1)[i]} vs {num}'


def test_discrete_sampler_equals_nearest_pixel_formula():
    points = [2, 3, 1]
    value, shapes, locs, weights = _inputs(points, seed=4)
    got = ms_deform_attn_core(paddle.to_tensor(value), shapes, paddle.to_tensor(locs), paddle.to_tensor(weights),
                              points, method='discrete').numpy()
    b, _, nh, hc = value.shape
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    want = np.zeros_like(got)
    for bi in range(b):
        for qi in range(locs.shape[1]):
            for hi in range(nh):
                p = 0
                for lvl, (h, w) in enumerate(shapes):
                    for _ in range(points[lvl]):
                        x, y = locs[bi, qi, hi, p]
                        col = min(max(int(np.floor(x * w + 0.5)), 0), w - 1)
                        row = min(max(int(np.floor(y * h + 0.5)), 0), h - 1)
                        want[bi, qi, hi * hc:(hi + 1) * hc] += weights[bi, qi, hi, p] * \
                            value[bi, starts[lvl] + row * w + col, hi]
                        p += 1
    err = np.abs(got - want).max()
    assert err < 1e-9, f'max error {err}'


def _official_order(value, shapes, locs, weights, points):
    """The official float32 arithmetic: per-level grid_sample [n, hc, q, np], points stacked on the last axis,
    multiplied by the weights and summed there (PaddleDetection's deformable_attention_core_func)."""
    import paddle.nn.functional as F
    b, _, nh, hc = value.shape
    q = locs.shape[1]
    grids = (2 * locs - 1).split(points, axis=-2)
    sampled = []
    for v, (h, w), g in zip(value.split([h * w for h, w in shapes], axis=1), shapes, grids):
        v = v.flatten(2).transpose([0, 2, 1]).reshape([b * nh, hc, h, w])
        g = g.transpose([0, 2, 1, 3, 4]).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode='bilinear', padding_mode='zeros', align_corners=False))
    out = (paddle.concat(sampled, -1) * weights.transpose([0, 2, 1, 3]).reshape([b * nh, 1, q, -1])).sum(-1)
    return out.reshape([b, nh * hc, q]).transpose([0, 2, 1])


def test_float32_output_is_bit_equal_to_the_official_summation():
    """Not only close: the points are multiplied and added in the official order, so float32 results match to
    the last bit (a matmul over the points differed by ~1 ulp)."""
    points = [4, 4, 4]
    value, _, locs, weights = _inputs(points, shapes=((16, 12), (8, 6), (4, 3)), b=2, q=50, nh=4, hc=8, seed=3)
    shapes = [(16, 12), (8, 6), (4, 3)]
    args = [paddle.to_tensor(a.astype('float32')) for a in (value, locs, weights)]
    got = ms_deform_attn_core(args[0], shapes, args[1], args[2], points).numpy()
    want = _official_order(args[0], shapes, args[1], args[2], points).numpy()
    np.testing.assert_array_equal(got, want)


class _Locations(paddle.nn.Layer):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, query, reference_points):
        return self.attn._locations(query, reference_points)


def test_sampling_locations_are_bit_equal_to_the_broadcast_formula():
    """The tiled form (box and scales tiled to [b*q, nh*sum(np)*2]), eager and traced for export, computes the
    numbers of the official broadcast xy + offset * (offset_scale / np) * wh, in float32."""
    from ppdet_rtdetr.modeling.deformable_attn import MSDeformableAttention
    paddle.seed(0)
    points, nh, scale = [3, 2, 1], 2, 0.7
    attn = MSDeformableAttention(embed_dim=16, num_heads=nh, num_levels=3, num_points=points, offset_scale=scale)
    rng = np.random.default_rng(5)
    with paddle.no_grad():
        attn.sampling_offsets.weight.set_value(rng.normal(size=attn.sampling_offsets.weight.shape).astype('float32'))
    query = paddle.to_tensor(rng.normal(size=(2, 5, 16)).astype('float32'))
    ref = paddle.to_tensor(rng.uniform(0.05, 0.95, size=(2, 5, 1, 4)).astype('float32'))
    # [b, q, nh*sum(np)*2] -> [b*q, nh*sum(np), 2]; [b, q, 1, 4] -> [b*q, 1, 4]
    offsets = attn.sampling_offsets(query).numpy().reshape(10, nh * 6, 2)
    box = ref.numpy().reshape(10, 1, 4)
    per_point = np.tile(np.array([1 / n for n in points for _ in range(n)], 'float32'), nh) * np.float32(scale)
    want = (box[..., :2] + offsets * per_point[:, None] * box[..., 2:]).reshape(10, -1)
    np.testing.assert_array_equal(attn._locations(query, ref).numpy(), want)
    static = paddle.jit.to_static(_Locations(attn), full_graph=True, input_spec=[
        paddle.static.InputSpec([None, 5, 16], 'float32'), paddle.static.InputSpec([None, 5, 1, 4], 'float32')])
    np.testing.assert_array_equal(static(query, ref).numpy(), want)
