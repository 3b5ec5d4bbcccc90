"""Run exported folders through PaddleX's Python API, inside the PaddleX venv (tests/deploy/test_paddlex.py).

    python paddlex_run.py IMAGE MODEL_DIR[:library.so] ...

For each folder: `paddlex.create_model(<inference.yml's Global.model_name>, model_dir=...).predict(IMAGE)` and
an `object_detection` pipeline made by `paddlex.create_pipeline(config=...)` on the same folder; a folder given
with `:library.so` first registers that operator library (an export.cpu_fused_attention export), the way a
PaddleX user has to. Prints one JSON object: {"<dir> model" | "<dir> pipeline": [[cls, score, x1, y1, x2, y2], ...]}.
"""
import json
import sys

import yaml


def _rows(result):
    return [[b['cls_id'], b['score']] + [float(v) for v in b['coordinate']] for b in result['boxes']]


def pipeline_config(model_dir, model_name):
    """PaddleX's object_detection pipeline on a local folder, every box kept (threshold 0)."""
    return {'pipeline_name': 'object_detection',
            'SubModules': {'ObjectDetection': {'module_name': 'object_detection', 'model_name': model_name,
                                               'model_dir': model_dir, 'batch_size': 1, 'img_size': None,
                                               'threshold': 0.0}}}


def main(image, folders):
    import paddlex  # here: test_paddlex.py imports pipeline_config in an environment without PaddleX
    out = {}
    for folder in folders:
        model_dir, _, library = folder.partition(':')
        if library:
            import paddle
            paddle.utils.cpp_extension.load_op_meta_info_and_register_op(library)
        with open(f'{model_dir}/inference.yml') as f:
            model_name = yaml.safe_load(f)['Global']['model_name']
        model = paddlex.create_model(model_name=model_name, model_dir=model_dir, device='cpu')
        out[f'{model_dir} model'] = [r for res in model.predict(image, threshold=0.0) for r in _rows(res)]
        pipeline = paddlex.create_pipeline(config=pipeline_config(model_dir, model_name), device='cpu')
        out[f'{model_dir} pipeline'] = [r for res in pipeline.predict(image) for r in _rows(res)]
    print(json.dumps(out))


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2:])
