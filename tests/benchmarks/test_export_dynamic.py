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
