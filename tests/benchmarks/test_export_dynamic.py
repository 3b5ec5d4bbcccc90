"""benchmarks/export_dynamic.py: the ratios dynamic / fixed are taken per round, between neighbours."""
import importlib.util

from helpers.export_utils import ROOT


def _script():
    spec = importlib.util.spec_from_file_location('export_dynamic', f'{ROOT}/benchmarks/export_dynamic.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _measurement(ms, gemm):
    return {'gemm_gflops_before': gemm, 'gemm_gflops_after': gemm, 'latency_ms': {'median': ms}}


def test_ratios_per_round_and_gemm_normalised():
    # round 0: the machine was twice as slow for the dynamic run (GEMM 50 vs 100): raw ratio 2, normalised 1
    rounds = [{'fixed': _measurement(100., 100.), 'dynamic': _measurement(200., 50.)},
              {'fixed': _measurement(110., 100.), 'dynamic': _measurement(99., 100.)},
              {'fixed': _measurement(100., 80.), 'dynamic': _measurement(104., 80.)}]
    out = _script().summarize(rounds)
    assert out['fixed_median_ms'] == 100.0 and out['dynamic_median_ms'] == 104.0
    assert out['ratio_dynamic_over_fixed']['per_round'] == [2.0, 0.9, 1.04]
    assert out['ratio_gemm_normalised']['per_round'] == [1.0, 0.9, 1.04]
    assert (out['ratio_gemm_normalised']['median'], out['ratio_gemm_normalised']['min'],
            out['ratio_gemm_normalised']['max']) == (1.0, 0.9, 1.04)


def test_interleaved_ratios_are_taken_per_pair_in_alternating_order(monkeypatch):
    # a fake clock: each run advances it by its variant's cost, and the machine slows down by 1.5x after the
    # warm-ups and the first two pairs; per-pair ratios stay 1.1 because both runs of a pair see the same machine
    script = _script()
    clock, order = [0.], []

    def runner(engine, model_dir, inputs, threads):
        assert inputs['image'].shape == (1, 3, 64, 96) and engine == 'onnxruntime'

        def run():
            order.append(model_dir)
            clock[0] += (1.1 if model_dir == 'd' else 1.) * (1.5 if len(order) > 2 + 4 else 1.)
        return run

    monkeypatch.setattr(script, 'engine_runner', runner)
    monkeypatch.setattr(script, 'gemm_gflops', lambda: 100.)
    monkeypatch.setattr(script.time, 'perf_counter', lambda: clock[0])
    out = script.interleaved('onnxruntime', {'fixed': 'f', 'dynamic': 'd'}, (64, 96), 2, pairs=6, warmup=1)
    assert order[2:] == ['f', 'd', 'd', 'f', 'f', 'd', 'd', 'f', 'f', 'd', 'd', 'f']  # after 1 warm-up each
    assert out['pair_ratio_median'] == 1.1 and out['pair_ratio_p10_p90'] == [1.1, 1.1]
    assert (out['fixed_median_ms'], out['dynamic_median_ms']) == (1500.0, 1650.0)  # 4 of 6 runs slow
