"""Evaluate trained weights with ppdet's Trainer, as PaddleDetection's tools/eval.py does.

    python tools/eval.py -c configs/rtdetr/rtdetr_r50vd_6x_coco.yml -o weights=output/best_model
        [--classwise] [--output_eval dir --save_prediction_only] [--json_eval --output_eval dir]
"""
import ppdet_rtdetr  # noqa: F401  (registers modules)
from ppdet.core.workspace import create
from ppdet.engine import init_parallel_env
from ppdet.metrics.coco_utils import json_eval_results

from ppdet_rtdetr.cli import ToolArgsParser, load_tool_config
from ppdet_rtdetr.engine import RTDETRTrainer, safe_load


def parse_args(argv=None):
    parser = ToolArgsParser(__doc__)
    parser.add_argument('--output_eval', default=None,
                        help='directory for the prediction JSON (default: current directory)')
    parser.add_argument('--json_eval', action='store_true',
                        help='score the bbox.json already in --output_eval, without a model')
    parser.add_argument('--slim_config', default=None, help='PaddleSlim config to apply')
    parser.add_argument('--classwise', action='store_true', help='also print per-class AP')
    parser.add_argument('--save_prediction_only', action='store_true',
                        help='save predictions without computing the metric')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (ppdet enables it on GPU/NPU/MLU only)')
    safe_load.add_flag(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg, _ = load_tool_config(args, mode='eval')

    if args.json_eval:
        json_eval_results(cfg.metric, json_directory=args.output_eval,
                          dataset=create('EvalDataset')())
        return
    init_parallel_env()
    trainer = RTDETRTrainer(cfg, mode='eval')
    trainer.load_weights(cfg.weights)
    trainer.evaluate()


if __name__ == '__main__':
    main()
