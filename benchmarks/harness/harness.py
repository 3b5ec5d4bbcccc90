"""Several engines and batch sizes of one config in one run, each in its own worker process, into one report.

The model is exported once (random weights with seed 0 unless `weights` is given); every figure carries the
numpy float32 GEMM rate measured right before and after it, and `fraction_of_gemm` = achieved GFLOP/s over
their mean. GFLOPs count a multiply-add as 2 (flops.py) on the model each engine runs: RepVGG-fused for the
exported engines, unfused for dygraph (as tools/eval.py runs it).
"""
import json
import os
import subprocess
import sys
import time

import numpy as np

from .flops import count_gflops
from .probe import machine, worker_env
from .runners import ROOT

__all__ = ['prepare', 'run_worker', 'summarize', 'stage_fractions', 'run_benchmark', 'emit_report']


def prepare(config, opt, image_shape, work_dir, onnx=True):
    """Export `config` to work_dir/model (+ model.onnx) and count its GFLOPs.

    Returns:
        (facts dict for the report, model_dir, path of the unfused weights the dygraph worker loads).
    """
    import paddle
    import ppdet_rtdetr  # noqa: F401  (registers modules)
    from ppdet.core.workspace import create
    from ppdet_rtdetr.cli import apply_overrides
    from ppdet_rtdetr.engine.checkpoint import load_model_weights
    from ppdet_rtdetr.config import load_config
    from ppdet_rtdetr.export import build_export_model, export_inference_model, export_onnx, resolve_export_size

    cfg = load_config(config)
    apply_overrides(opt)
    h, w = resolve_export_size(cfg, image_shape)
    paddle.seed(0)
    model = create(cfg.architecture)
    # speed does not depend on the values: the config's default `weights` (a training output) is not needed
    if opt.get('weights'):
        load_model_weights(model, opt['weights'])
    weights = os.path.join(work_dir, 'weights.pdparams')
    paddle.save(model.state_dict(), weights)  # unfused: the dygraph worker loads it into a fresh model
    inputs = {'image': paddle.rand([1, 3, h, w]), 'im_shape': paddle.to_tensor([[h, w]], 'float32'),
              'scale_factor': paddle.ones([1, 2])}
    model.eval()
    unfused = count_gflops(model, inputs)
    model = build_export_model(cfg, weights)
    facts = {'config': os.path.relpath(os.path.abspath(config), ROOT), 'overrides': opt, 'input_hw': [h, w],
             'weights': opt.get('weights') or 'random (seed 0)',
             'params_M': round(sum(int(np.prod(p.shape)) for p in model.parameters()) / 1e6, 2),
             'gflops_per_image_by_part': {k: round(v, 3) for k, v in count_gflops(model, inputs).items()},
             # what dygraph eval runs (RepVGG blocks with both branches), so what its GFLOP/s are counted on
             'gflops_per_image_by_part_unfused': {k: round(v, 3) for k, v in unfused.items()}}
    for key in ('', '_unfused'):
        facts['gflops_per_image' + key] = round(sum(facts['gflops_per_image_by_part' + key].values()), 3)
    model_dir = export_inference_model(cfg, model, os.path.join(work_dir, 'model'))
    if onnx:
        export_onnx(model_dir)
    return facts, model_dir, weights


def run_worker(engine, model_dir, image_shape, batch, cpu_threads, warmup=3, runs=10, gemm_size=2048, config=None,
               opt=None, weights=None, model_file=None, profile=False, int8_probe=False):
    """Run harness.worker in a fresh process; returns its result dict (RuntimeError with the
    worker's stderr if it fails)."""
    cmd = [sys.executable, '-m', 'harness.worker', '--engine', engine, '--batch_size', str(batch),
           '--cpu_threads', str(cpu_threads), '--warmup', str(warmup), '--runs', str(runs), '--gemm_size',
           str(gemm_size), '--image_shape', *[str(s) for s in image_shape]]
    for flag, value in (('--model_dir', model_dir), ('--model_file', model_file), ('--config', config),
                        ('--weights', weights)):
        cmd += [flag, value] if value else []
    cmd += ['--profile'] if profile else []
    cmd += ['--int8_probe'] if int8_probe else []
    cmd += ['-o'] + [f'{k}={json.dumps(v)}' for k, v in opt.items()] if opt else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env(cpu_threads, ROOT))
    lines = [line for line in proc.stdout.splitlines() if line.startswith('BENCHMARK ')]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f'{engine} batch {batch} failed:\n{proc.stderr[-3000:]}')
    return json.loads(lines[-1][len('BENCHMARK '):])


def summarize(result, gflops, batch):
    """Adds FPS, GFLOP/s and the fraction of the GEMM rate (the mean of the two GEMM measurements)."""
    seconds = result['latency_ms']['median'] / 1e3
    gemm = (result['gemm_gflops_before'] + result['gemm_gflops_after']) / 2
    result['fps'] = round(batch / seconds, 3)
    result['gflops_per_s'] = round(batch * gflops / seconds, 2)
    result['fraction_of_gemm'] = round(batch * gflops / seconds / gemm, 3)
    return result


def stage_fractions(stages_ms, by_part, gemm, batch):
    """GFLOP/s and fraction of the GEMM rate of each dygraph stage (post-process has no counted FLOPs)."""
    parts = {'backbone': 'backbone', 'encoder': 'neck', 'transformer (query selection + decoder)': 'transformer'}
    out = {}
    for stage, ms in stages_ms.items():
        gflops = batch * by_part.get(parts.get(stage, ''), 0.0)
        out[stage] = {'ms': ms, 'share_of_time': round(ms / sum(stages_ms.values()), 3),
                      'gflops': round(gflops, 2), 'fraction_of_gemm': round(gflops / (ms / 1e3) / gemm, 3)}
    return out


def run_benchmark(config, opt, image_shape, engines, batch_sizes, cpu_threads, work_dir, warmup=3, runs=10,
                  gemm_size=2048, profile=False, log=sys.stderr):
    """Export once, run every engine x batch size in its own worker; returns the report dict."""
    report = {'date': time.strftime('%Y-%m-%d %H:%M'), 'machine': machine(),
              'settings': {'cpu_threads': cpu_threads, 'warmup': warmup, 'runs': runs,
                           'gemm': f'numpy float32 {gemm_size}^3',
                           'env': {k: v for k, v in worker_env(cpu_threads, ROOT).items()
                                   if k.endswith('_THREADS') or k.startswith('MKL_DEBUG')}}}
    onnx = bool({'onnxruntime', 'openvino'} & set(engines))  # the engines that run model.onnx
    report['model'], model_dir, weights = prepare(config, opt, image_shape, work_dir, onnx)
    image_shape = [3] + report['model']['input_hw']
    results = []
    for engine in engines:
        for batch in batch_sizes:
            key = '_unfused' if engine == 'dygraph' else ''
            result = summarize(run_worker(engine, model_dir, image_shape, batch, cpu_threads, warmup, runs, gemm_size,
                                          config, opt, weights, profile=profile),
                               report['model']['gflops_per_image' + key], batch)
            if 'stages_ms' in result:
                gemm = (result['gemm_gflops_before'] + result['gemm_gflops_after']) / 2
                result['stages'] = stage_fractions(result.pop('stages_ms'),
                                                   report['model']['gflops_per_image_by_part' + key], gemm, batch)
            results.append(dict(engine=engine, batch_size=batch, **result))
            print(f"{engine:14s} batch {batch}: {result['latency_ms']['median']:9.1f} ms  "
                  f"{result['fraction_of_gemm']:.0%} of GEMM", file=log)
    report['results'] = results
    report['machine']['load_avg_1min_after'] = os.getloadavg()[0]
    return report


def emit_report(report, output=None):
    """Print a benchmark report as JSON (what every benchmark script ends with) and also write it to `output`."""
    text = json.dumps(report, indent=1)
    print(text)
    if output:
        with open(output, 'w') as f:
            f.write(text + '\n')
