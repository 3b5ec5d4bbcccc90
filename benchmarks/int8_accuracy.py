"""COCO AP of a trained model in float32 and INT8 onnxruntime, on the config's EvalDataset.

    python benchmarks/int8_accuracy.py -c configs/demo/rtdetr_r18vd_shapes.yml \
        -o weights=output/rtdetr_r18vd_shapes/model_final --work_dir /tmp/demo_int8 [--calib_images 32] \
        [--output benchmarks/int8_demo_ap.json]

Exports the config (with --onnx), quantizes it with tools/quantize.py (calibrated on --calib_images images of
the TrainDataset, sensitivity sweep on), then runs both ONNX files on every EvalDataset image through the
config's TestReader (the deploy preprocessing) and scores them with pycocotools against the annotation file.
"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from harness.harness import emit_report  # noqa: E402


def _tool(name, args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    subprocess.run([sys.executable, os.path.join(ROOT, 'tools', name)] + args, check=True, env=env)


def coco_ap(coco_gt, detections, image_ids, clsid2catid):
    """(AP, AP50) of per-image detections (rows class, score, x1, y1, x2, y2 in original pixels)."""
    from pycocotools.cocoeval import COCOeval
    results = [{'image_id': int(image_id), 'category_id': int(clsid2catid[int(row[0])]), 'score': float(row[1]),
                'bbox': [float(row[2]), float(row[3]), float(row[4] - row[2]), float(row[5] - row[3])]}
               for image_id, dets in zip(image_ids, detections) for row in dets]
    if not results:
        return 0.0, 0.0
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), 'bbox')
    evaluator.params.imgIds = list(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[0]), float(evaluator.stats[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-c', '--config', required=True)
    parser.add_argument('-o', '--opt', nargs='*', default=[], help='weights=... (a trained model)')
    parser.add_argument('--work_dir', required=True)
    parser.add_argument('--int8_name', default=None, help='INT8 folder name in work_dir (default: <config>_int8)')
    parser.add_argument('--calib_images', type=int, default=32)
    parser.add_argument('--quantize_args', nargs=argparse.REMAINDER, default=[],
                        help='the rest of the line goes to tools/quantize.py (e.g. --fp32_groups, --method)')
    parser.add_argument('--cpu_threads', type=int, default=2)
    parser.add_argument('--output', default=None)
    parser.add_argument('--note', action='append', default=[])
    args = parser.parse_args(argv)
    name = os.path.splitext(os.path.basename(args.config))[0]
    fp32_dir = os.path.join(args.work_dir, name)
    int8_dir = os.path.join(args.work_dir, args.int8_name or name + '_int8')
    opt = ['-o'] + args.opt if args.opt else []
    if not os.path.isfile(os.path.join(fp32_dir, 'model.onnx')):
        _tool('export_model.py', ['-c', args.config, '--output_dir', args.work_dir, '--onnx'] + opt)
    if not os.path.isfile(os.path.join(int8_dir, 'model.onnx')):
        _tool('quantize.py', ['-c', args.config, '--model_dir', fp32_dir, '--output_dir', int8_dir, '--calib_images',
                              str(args.calib_images), '--cpu_threads', str(args.cpu_threads)] + args.quantize_args + opt)

    import yaml
    from ppdet.data.source.category import get_categories
    from pycocotools.coco import COCO
    from ppdet_rtdetr.config import load_config
    from ppdet_rtdetr.quant import ConfigPreprocess, detection_drift
    from ppdet_rtdetr.quant.sensitivity import OrtRunner
    cfg = load_config(args.config)
    dataset = cfg['EvalDataset']
    anno_file = dataset.get_anno()
    coco_gt = COCO(anno_file)
    image_ids = sorted(coco_gt.getImgIds())
    paths = [os.path.join(dataset.dataset_dir, dataset.image_dir, coco_gt.loadImgs(i)[0]['file_name'])
             for i in image_ids]
    clsid2catid, _ = get_categories('COCO', anno_file)
    with open(os.path.join(int8_dir, 'infer_cfg.yml')) as f:
        int8_cfg = yaml.safe_load(f)
    preprocess = ConfigPreprocess(cfg, int8_cfg['image_shape'])
    feeds = [preprocess(p) for p in paths]
    report = {'tool': 'benchmarks/int8_accuracy.py', 'date': time.strftime('%Y-%m-%d %H:%M'),
              'config': args.config, 'overrides': args.opt, 'eval_images': len(paths), 'quantization': int8_cfg['quantization']}
    dets = {}
    for key, model_dir in (('fp32', fp32_dir), ('int8', int8_dir)):
        dets[key] = OrtRunner(os.path.join(model_dir, 'model.onnx'), args.cpu_threads)(feeds)
        ap, ap50 = coco_ap(coco_gt, dets[key], image_ids, clsid2catid)
        report[key] = {'AP': round(ap, 4), 'AP50': round(ap50, 4)}
    report['AP_difference'] = round(report['int8']['AP'] - report['fp32']['AP'], 4)
    report['drift_on_eval_images'] = detection_drift(dets['fp32'], dets['int8'])
    report['notes'] = args.note
    emit_report(report, args.output)
    return report


if __name__ == '__main__':
    main()
