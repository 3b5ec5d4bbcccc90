"""What a benchmark worker times: the dygraph model (with its stages, by forward hooks) or a deploy engine.

Each runner is a zero-argument callable that runs one already-preprocessed batch and copies the result out.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

from .probe import harness_env

__all__ = ['ROOT', 'STAGES', 'load_deploy', 'dygraph_runner', 'engine_runner', 'ort_op_share', 'paddle_op_totals']

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# stage -> the top-level sublayer whose forward ends it; the last stage ends with the copied-out result
STAGES = (('backbone', 'backbone'), ('encoder', 'neck'), ('transformer (query selection + decoder)', 'transformer'),
          ('post_process', None))


def load_deploy(relpath, name):
    """Import deploy/<relpath> (the deploy scripts are not a package; deploy/python holds their shared modules)."""
    import importlib.util
    sys.path.insert(0, os.path.join(ROOT, 'deploy', 'python'))
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'deploy', relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dygraph_runner(model, inputs):
    """(run, stages) of an eval-mode dygraph architecture on `inputs` (dict of arrays).

    run() is one forward with the result copied to numpy; stages() is the same forward returning the wall
    time [s] of each of STAGES, stamped by forward hooks on the model's own sublayers (the forward is the
    model's, not a copy of it; Paddle's CPU kernels are synchronous, so a stamp is when the stage finished).
    """
    import paddle
    x = {k: paddle.to_tensor(v) for k, v in inputs.items()}

    def run():
        with paddle.no_grad():
            model(x)['bbox'].numpy()

    def stages():
        marks = []
        stamp = lambda *_: marks.append(time.perf_counter())  # noqa: E731  (hook signature: layer, inputs[, out])
        handles = [model.backbone.register_forward_pre_hook(stamp)]
        handles += [getattr(model, layer).register_forward_post_hook(stamp) for _, layer in STAGES if layer]
        try:
            run()
            marks.append(time.perf_counter())
        finally:
            for handle in handles:
                handle.remove()
        return np.diff(marks)

    return run, stages


def _cpu_config(model_dir, cpu_threads, mkldnn):
    """Paddle Inference CPU config of an exported folder, oneDNN on or off (Paddle 3 turns it on by default)."""
    from paddle import inference
    deploy = load_deploy('python/preprocess.py', 'deploy_pre')
    deploy.register_custom_ops(model_dir)
    config = inference.Config(*deploy.find_model_files(model_dir))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(cpu_threads)
    config.enable_mkldnn() if mkldnn else config.disable_mkldnn()
    return config


def _official_onednn_runner(model_dir, inputs, cpu_threads):
    """Paddle Inference with oneDNN and its `onednn_placement_pass` deleted: the official export's upsample
    (nearest_interp) fails in the oneDNN executor otherwise (benchmarks/official.py)."""
    from paddle import inference
    config = _cpu_config(model_dir, cpu_threads, mkldnn=True)
    config.delete_pass('onednn_placement_pass')
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    handles = {name: predictor.get_input_handle(name) for name in predictor.get_input_names()}

    def run():
        for name, handle in handles.items():
            handle.copy_from_cpu(inputs[name])
        predictor.run()
        return [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]
    return run


def engine_runner(engine, model_dir, inputs, cpu_threads, model_file=None):
    """run() of a deploy detector: 'onnxruntime' (deploy/onnxruntime, `model_file` or model_dir/model.onnx),
    'openvino' (deploy/openvino, the same file, float32),
    'paddle' or 'paddle_mkldnn' (deploy/python, Paddle Inference without / with oneDNN), or
    'paddle_mkldnn_official' (how the official export runs on oneDNN, `_official_onednn_runner`)."""
    if engine == 'paddle_mkldnn_official':
        return _official_onednn_runner(model_dir, inputs, cpu_threads)
    if engine == 'onnxruntime':
        detector = load_deploy('onnxruntime/infer.py', 'deploy_ort').OrtDetector(model_dir, model_file,
                                                                                 cpu_threads=cpu_threads)
    elif engine == 'openvino':
        detector = load_deploy('openvino/infer.py', 'deploy_ov').OpenVINODetector(model_dir, model_file,
                                                                                  cpu_threads=cpu_threads)
    else:
        detector = load_deploy('python/infer.py', 'deploy_paddle').PaddleDetector(
            model_dir, cpu_threads=cpu_threads, enable_mkldnn=engine == 'paddle_mkldnn')
    feeds = {name: inputs[name] for name in detector.input_names}
    return lambda: detector._run(feeds)


def ort_op_share(model_file, inputs, cpu_threads, top=10):
    """{op type: share of the kernel time} of onnxruntime's profiler over 2 runs after a warm-up run."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling, options.log_severity_level = cpu_threads, True, 3
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), 'ort')
    session = ort.InferenceSession(model_file, options)
    feeds = {i.name: inputs[i.name] for i in session.get_inputs()}
    for _ in range(3):
        session.run(None, feeds)
    with open(session.end_profiling()) as f:
        events = [e for e in json.load(f) if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time')]
    by_op = {}
    for e in events[len(events) // 3:]:  # after the first (warm-up) run
        by_op[e['args']['op_name']] = by_op.get(e['args']['op_name'], 0) + e['dur']
    return _shares(by_op, top)


def _shares(by_op, top):
    total = sum(by_op.values())
    return {op: round(t / total, 3) for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]}


_PROFILE_ROW = re.compile(r'^(onednn_op|pd_op)\.(\S+)\s+\d+\s+([\d.]+)')


def _paddle_profile_ms(model_dir, inputs, cpu_threads, mkldnn, runs):
    """{op type: total ms} from Paddle Inference's profile report of `runs` runs, in a fresh process (the
    report is printed by the C++ side at exit)."""
    code = ('import sys, numpy as np; from harness.runners import _profile_child; '
            '_profile_child(sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5]))')
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(os.path.join(tmp, 'inputs.npz'), **inputs)
        proc = subprocess.run([sys.executable, '-c', code, model_dir, os.path.join(tmp, 'inputs.npz'),
                               str(cpu_threads), '1' if mkldnn else '0', str(runs)], capture_output=True, text=True,
                              env=harness_env())
    totals = {}
    # the first table ("Event  Calls  Total ..."): top-level rows start at column 0, nested rows are indented
    for line in (proc.stdout + proc.stderr).split('Event Summary')[1].splitlines()[3:]:
        if not line.strip():
            break
        match = _PROFILE_ROW.match(line)
        if match:
            totals[match.group(2)] = totals.get(match.group(2), 0.) + float(match.group(3))
    return totals


def _profile_child(model_dir, inputs, cpu_threads, mkldnn, runs):
    from paddle import inference
    config = _cpu_config(model_dir, cpu_threads, mkldnn)
    config.enable_profile()
    predictor = inference.create_predictor(config)
    for name in predictor.get_input_names():
        predictor.get_input_handle(name).copy_from_cpu(inputs[name])
    for _ in range(runs):
        predictor.run()


def paddle_op_totals(model_dir, inputs, cpu_threads, mkldnn, top=10):
    """{op type: share of the steady-state time} of Paddle Inference. Its report also counts the first run,
    which builds the oneDNN primitives and folds constants (seconds on one op type): the steady state is the
    report of 4 runs minus the report of 1."""
    first, four = (_paddle_profile_ms(model_dir, inputs, cpu_threads, mkldnn, runs) for runs in (1, 4))
    return _shares({op: t - first.get(op, 0.) for op, t in four.items() if t > first.get(op, 0.)}, top)
