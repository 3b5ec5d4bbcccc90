"""benchmarks/readme_table.py: the README's speed table is the one made from benchmarks/cpu_speed.json."""
import copy
import importlib.util
import json

import pytest

from helpers.export_utils import ROOT


def _script():
    spec = importlib.util.spec_from_file_location('readme_table', f'{ROOT}/benchmarks/readme_table.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report():
    with open(f'{ROOT}/benchmarks/cpu_speed.json') as f:
        return json.load(f)


def test_readme_table_is_generated_from_the_json():
    assert _script().main(['--check']) == 0, 'README.md speed table is stale: python benchmarks/readme_table.py --write'


def test_cells_are_medians_over_rounds():
    script, report = _script(), copy.deepcopy(_report())
    rounds = report['models']['r18vd']['rounds']
    for i, r in enumerate(rounds):  # medians 100, 200, ... whatever the JSON held
        r['ort_ours']['latency_ms']['median'] = 100. * (i + 1)
    expected = 100. * (len(rounds) + 1) / 2
    row = next(line for line in script.table(report) if line.startswith('| ONNX Runtime |'))
    assert row.split(' | ')[1] == str(int(round(expected))), row


def test_missing_markers_are_named(tmp_path):
    readme = tmp_path / 'README.md'
    readme.write_text('# no table here\n')
    with pytest.raises(ValueError, match='lacks the speed table markers'):
        _script().main(['--readme', str(readme), '--check'])
