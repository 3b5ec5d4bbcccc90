"""Mask-RT-DETR speed and memory on CPU (issue 24 item 7), printed as one JSON.

    python benchmarks/mask_speed.py --work_dir /tmp/mask_speed
        [--config configs/mask_rtdetr/mask_rtdetr_hgnetv2_l_6x_coco.yml]
        [--threads 2] [--runs 10] [--output benchmarks/mask_speed.json]
        [--parts export stages train official --official_repo DIR]

With seeded random weights (speed does not depend on them; the post-process keeps num_top_queries masks
whatever the scores), at 640x640, batch 1, `--threads` threads, an image whose original size is 480x640:
1. `export`: our fixed-size export (tools/export_model.py --onnx) run in Paddle Inference + oneDNN and in
   onnxruntime: median and min ms over `--runs` after 2 warm-up runs;
2. `dygraph_stages`: one eval forward in dygraph timed by stage (backbone; encoder with its mask branch:
   mask-feature FPN, stride-4 lateral and prototype convs, their bilinear resizes; transformer with the mask
   query head and its product with the prototypes in every `_predict` call; post-process with the paste, i.e.
   the per-image resize of the K masks to the original size, sigmoid and threshold), as shares of the total,
   and the export's form of the paste (`batch_resize`, matrix products) timed alone on masks of the same shape;
3. `train_step`: one dygraph training step (forward, loss, backward) at batch 2 with 5 instances per image:
   its time and the process's peak resident memory (ru_maxrss) before and after.
4. `official` (with --official_repo, a PaddleDetection checkout): ours against the official export of the same
   weights (benchmarks/official.py), the two alternating run by run in one process per engine.
Each part runs in its own process (`--part`); the load average of the machine is recorded around each, since
a shared machine's other jobs change every timing.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

SIZE, ORIGINAL = 640, (480, 640)


def _load():
    return [round(v, 2) for v in os.getloadavg()]


def _build(config, train=False):
    import paddle
    import ppdet_rtdetr  # noqa: F401  (registers modules)
    from ppdet.core.workspace import create
    from ppdet_rtdetr.cli import apply_overrides
    cfg = ppdet_rtdetr.load_config(config)
    apply_overrides({'pretrain_weights': ''})
    paddle.seed(0)
    model = create(cfg.architecture)
    model.train() if train else model.eval()
    return cfg, model


def _inputs(batch=1):
    import paddle
    h, w = ORIGINAL
    return {'image': paddle.rand([batch, 3, SIZE, SIZE]),
            'im_shape': paddle.to_tensor([[SIZE, SIZE]] * batch, 'float32'),
            'scale_factor': paddle.to_tensor([[SIZE / h, SIZE / w]] * batch, 'float32')}


def _deploy_module(engine):
    """deploy/<engine>/infer.py as a module (deploy/python, which holds the shared modules, on sys.path)."""
    import importlib.util
    if os.path.join(ROOT, 'deploy', 'python') not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, 'deploy', 'python'))
    spec = importlib.util.spec_from_file_location(f'{engine}_infer', os.path.join(ROOT, 'deploy', engine, 'infer.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def part_export(args):
    """Export (once, kept in work_dir) and time Paddle Inference + oneDNN and onnxruntime."""
    import paddle
    model_dir = os.path.join(args.work_dir, os.path.splitext(os.path.basename(args.config))[0])
    if not os.path.isfile(os.path.join(model_dir, 'model.onnx')):
        _, model = _build(args.config)
        weights = os.path.join(args.work_dir, 'weights.pdparams')
        paddle.save(model.state_dict(), weights)
        subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'export_model.py'), '-c', args.config, '-o',
                        f'weights={weights}', 'pretrain_weights=', '--output_dir', args.work_dir, '--onnx'],
                       check=True, env=dict(os.environ, PYTHONPATH=ROOT))
    paddle_infer, ort_infer = _deploy_module('python'), _deploy_module('onnxruntime')
    feeds = {k: v.numpy() for k, v in _inputs().items()}
    out = {}
    for name, detector in (('paddle_onednn', lambda: paddle_infer.PaddleDetector(model_dir, cpu_threads=args.threads,
                                                                                 enable_mkldnn=True)),
                           ('onnxruntime', lambda: ort_infer.OrtDetector(model_dir, cpu_threads=args.threads))):
        det = detector()
        load = _load()
        times = []
        for i in range(args.runs + 2):
            start = time.perf_counter()
            det.predict(feeds)
            if i >= 2:
                times.append(1000 * (time.perf_counter() - start))
        out[name] = {'median_ms': round(float(np.median(times)), 1), 'min_ms': round(min(times), 1),
                     'runs': args.runs, 'load_before': load, 'load_after': _load()}
    return out


class _Timer:
    """Accumulated wall time of wrapped callables, by name."""

    def __init__(self):
        self.ms = {}

    def wrap(self, name, fn):
        def timed(*a, **kw):
            start = time.perf_counter()
            result = fn(*a, **kw)
            self.ms[name] = self.ms.get(name, 0.0) + 1000 * (time.perf_counter() - start)
            return result
        return timed


def part_stages(args):
    """Dygraph eval forward by stage (the second of two runs, so that allocations are warm)."""
    import paddle
    from ppdet_rtdetr.modeling import mask_postprocess
    _, model = _build(args.config)
    timer = _Timer()
    neck, tr = model.neck, model.transformer
    for name, layer in (('backbone', model.backbone), ('encoder_total', neck), ('mask_feat_fpn', neck.mask_feat_head),
                        ('mask_lateral', neck.enc_mask_lateral), ('mask_prototypes', neck.enc_mask_output),
                        ('transformer_total', tr)):
        layer.forward = timer.wrap(name, layer.forward)
    neck.resize.forward = timer.wrap('mask_resize_stride4', neck.resize.forward)
    tr._predict = timer.wrap('predict_heads', tr._predict)  # score head + mask query head x prototypes
    tr.mask_query_head.forward = timer.wrap('mask_query_head', tr.mask_query_head.forward)
    pp = model.post_process
    pp_call = type(pp).__call__
    type(pp).__call__ = lambda self, *a, **kw: timer.wrap('postprocess_total', pp_call)(self, *a, **kw)
    mask_postprocess.resize_each_image = timer.wrap('paste_resize', mask_postprocess.resize_each_image)
    inputs = _inputs()
    load = _load()
    with paddle.no_grad():
        model(inputs)
        timer.ms.clear()
        start = time.perf_counter()
        model(inputs)
        total = 1000 * (time.perf_counter() - start)
    # the export's paste (matrix products over the batch) on the same masks, here in dygraph
    k, h4, w4 = pp.num_top_queries, SIZE // 4, SIZE // 4
    masks = paddle.rand([1, k, h4, w4])
    out_hw = paddle.to_tensor([ORIGINAL], 'float32')
    paste_args = (masks, paddle.to_tensor([[h4, w4]], 'float32'), out_hw, out_hw.astype('int32').max(0))
    mask_postprocess.batch_resize(*paste_args)
    start = time.perf_counter()
    mask_postprocess.batch_resize(*paste_args)
    timer.ms['paste_batch_resize (export form, alone)'] = 1000 * (time.perf_counter() - start)
    ms = {k: round(v, 1) for k, v in timer.ms.items()}
    mask_branch = ms['mask_feat_fpn'] + ms['mask_lateral'] + ms['mask_prototypes'] + ms['mask_resize_stride4']
    return {'total_ms': round(total, 1), 'stage_ms': ms,
            'share_mask_features': round(mask_branch / total, 3),
            'share_predict_heads (class + mask query head + product with prototypes, every layer)':
                round(ms['predict_heads'] / total, 3),
            'share_postprocess': round(ms['postprocess_total'] / total, 3),
            'share_paste_resize': round(ms['paste_resize'] / total, 3),
            'load_before': load, 'load_after': _load()}


def part_train(args):
    """One training step at batch 2: time and peak resident memory."""
    import paddle
    _, model = _build(args.config, train=True)
    rng = np.random.RandomState(0)
    batch = _inputs(2)
    batch['gt_class'], batch['gt_bbox'], batch['gt_segm'] = [], [], []
    for _ in range(2):
        boxes = np.concatenate([rng.uniform(0.2, 0.8, (5, 2)), rng.uniform(0.05, 0.3, (5, 2))], 1).astype('float32')
        masks = np.zeros((5, SIZE, SIZE), 'uint8')
        for m, (cx, cy, w, h) in zip(masks, boxes * SIZE):
            m[int(cy - h / 2):int(cy + h / 2), int(cx - w / 2):int(cx + w / 2)] = 1
        batch['gt_class'].append(paddle.to_tensor(rng.randint(0, 80, (5, 1)).astype('int32')))
        batch['gt_bbox'].append(paddle.to_tensor(boxes))
        batch['gt_segm'].append(paddle.to_tensor(masks))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load = _load()
    start = time.perf_counter()
    loss = model(batch)['loss']
    loss.backward()
    seconds = time.perf_counter() - start
    return {'batch': 2, 'size': SIZE, 'step_s': round(seconds, 2), 'peak_rss_mb_before_step': round(rss_before),
            'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            'loss': round(float(loss), 4), 'load_before': load, 'load_after': _load()}


def _official_export(args, model_dir):
    """The official export of our weights (benchmarks/official.py) in work_dir/official, with our infer_cfg.yml
    (the same preprocessing) and its model.onnx; returns its folder."""
    import shutil
    from ppdet_rtdetr.export import export_onnx
    out = os.path.join(args.work_dir, 'official')
    if not os.path.isfile(os.path.join(out, 'model.json')):
        env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
        config = os.path.join('configs', 'mask_rtdetr', os.path.basename(args.config))
        subprocess.run([sys.executable, os.path.join(HERE, 'official.py'), '--repo', args.official_repo, '--config',
                        config, '--weights', os.path.join(args.work_dir, 'weights.pdparams'), '--out', out],
                       check=True, env=env)
        shutil.copyfile(os.path.join(model_dir, 'infer_cfg.yml'), os.path.join(out, 'infer_cfg.yml'))
    if not os.path.isfile(os.path.join(out, 'model.onnx')):
        try:
            export_onnx(out)
        except Exception as e:  # noqa: BLE001  (reported in the JSON, the Paddle figures still count)
            return out, f'{type(e).__name__}: {e}'
    return out, None


def part_official(args):
    """Ours against the official export of the same weights, alternating run by run in one process per engine
    (Paddle Inference + oneDNN: the official one with its onednn_placement_pass deleted, see official.py)."""
    sys.path.insert(0, HERE)
    from harness.runners import engine_runner
    model_dir = os.path.join(args.work_dir, os.path.splitext(os.path.basename(args.config))[0])
    official_dir, onnx_error = _official_export(args, model_dir)
    feeds = {k: v.numpy() for k, v in _inputs().items()}
    out = {'official_onnx_error': onnx_error} if onnx_error else {}
    engines = [('paddle_onednn', 'paddle_mkldnn', 'paddle_mkldnn_official')]
    if not onnx_error:
        engines.append(('onnxruntime', 'onnxruntime', 'onnxruntime'))
    for name, ours_engine, official_engine in engines:
        runners = {'ours': engine_runner(ours_engine, model_dir, feeds, args.threads),
                   'official': engine_runner(official_engine, official_dir, feeds, args.threads)}
        times = {k: [] for k in runners}
        load = _load()
        for i in range(args.runs + 1):
            for key, run in runners.items():
                start = time.perf_counter()
                run()
                if i:
                    times[key].append(1000 * (time.perf_counter() - start))
        med = {k: float(np.median(v)) for k, v in times.items()}
        out[name] = {'ours_median_ms': round(med['ours'], 1), 'official_median_ms': round(med['official'], 1),
                     'ours_over_official': round(med['ours'] / med['official'], 3), 'runs': args.runs,
                     'load_before': load, 'load_after': _load()}
    return out


PARTS = {'export': part_export, 'stages': part_stages, 'train': part_train, 'official': part_official}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=os.path.join(ROOT, 'configs', 'mask_rtdetr',
                                                         'mask_rtdetr_hgnetv2_l_6x_coco.yml'))
    parser.add_argument('--work_dir', default='/tmp/mask_speed')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--runs', type=int, default=10)
    parser.add_argument('--parts', nargs='+', default=['export', 'stages', 'train'], choices=list(PARTS),
                        help="'official' (ours against the official export) needs --official_repo")
    parser.add_argument('--official_repo', default=None, help='a PaddleDetection checkout (benchmarks/official.py)')
    parser.add_argument('--part', default=None, choices=list(PARTS), help='(internal) run one part here')
    parser.add_argument('--output', default=None)
    args = parser.parse_args(argv)
    if args.part:
        print('RESULT ' + json.dumps(PARTS[args.part](args)))
        return
    os.makedirs(args.work_dir, exist_ok=True)
    report = {'config': os.path.relpath(args.config, ROOT), 'input': f'{SIZE}x{SIZE}, original {ORIGINAL[0]}x'
              f'{ORIGINAL[1]}', 'threads': args.threads, 'cpu_count': os.cpu_count()}
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(args.threads))
    for part in args.parts:
        extra = ['--official_repo', os.path.abspath(args.official_repo)] if args.official_repo else []
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--part', part, '--config', args.config,
                               '--work_dir', args.work_dir, '--threads', str(args.threads), '--runs', str(args.runs)]
                              + extra, env=env, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith('RESULT ')]
        report[part] = json.loads(lines[-1][7:]) if lines else {'error': proc.stderr[-2000:]}
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        with open(args.output, 'w') as f:
            f.write(text + '\n')


if __name__ == '__main__':
    main()
