"""Train an RT-DETR config as PaddleDetection's tools/train.py does.

    python tools/train.py -c configs/rtdetr/rtdetr_r50vd_6x_coco.yml --eval [-r output/x[/10]] [--amp]
        [--seed N] [--use_vdl --vdl_log_dir vdl/] [-o key=value ...]

Trains with ppdet_rtdetr.engine.RTDETRTrainer (ppdet's Trainer plus fine-tune loading, atomic checkpoints,
resume from a folder, the non-finite-loss guard). `-o` may be repeated. `use_gpu: true` in a config falls back
to CPU on a CPU-only Paddle build (see ppdet_rtdetr/device.py).
"""
import ppdet_rtdetr  # noqa: F401  (registers modules)
from ppdet.engine import init_fleet_env, init_parallel_env
from ppdet.utils.logger import setup_logger

from ppdet_rtdetr.cli import ToolArgsParser, load_tool_config, str2bool
from ppdet_rtdetr.engine import RTDETRTrainer, safe_load
from ppdet_rtdetr.engine.seed import resolve_seed, seed_everything

logger = setup_logger('train')


def parse_args(argv=None):
    parser = ToolArgsParser(__doc__)
    parser.add_argument('--eval', action='store_true', help='evaluate after every snapshot epoch')
    parser.add_argument('-r', '--resume', default=None,
                        help='checkpoint (path without suffix), or its folder: the newest complete one in it')
    parser.add_argument('--slim_config', default=None, help='PaddleSlim config to apply')
    parser.add_argument('--enable_ce', action='store_true', help='fix the random seeds to 0 (as --seed 0)')
    parser.add_argument('--seed', type=int, default=None,
                        help='seed Python, NumPy, Paddle and the reader workers (wins over the config key `seed`)')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (ppdet enables it on GPU/NPU/MLU only); a non-finite loss skips the '
                             'step, nonfinite_loss_patience of them in a row stop training')
    parser.add_argument('--fleet', action='store_true', help='use fleet for distributed training')
    parser.add_argument('--use_vdl', type=str2bool, nargs='?', const=True, default=False,
                        help='log scalars to VisualDL')
    parser.add_argument('--vdl_log_dir', default='vdl_log_dir/scalar', help='VisualDL log dir')
    parser.add_argument('--save_prediction_only', action='store_true',
                        help='in --eval, save predictions without computing the metric')
    parser.add_argument('--profiler_options', default=None, help='ppdet profiler options')
    parser.add_argument('--to_static', action='store_true', help='train a to_static model')
    safe_load.add_flag(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg, device = load_tool_config(args, mode='train')
    if args.amp and device not in ('gpu', 'npu', 'mlu'):
        logger.warning('--amp has no effect on {}: ppdet 2.6.0 turns auto_cast on for GPU, NPU '
                       'and MLU only.'.format(device))

    if args.fleet:
        init_fleet_env(cfg.get('find_unused_parameters', False))
    else:
        init_parallel_env()
    seed = resolve_seed(0 if args.enable_ce and args.seed is None else args.seed, cfg)
    if seed is not None:
        seed_everything(seed)
        logger.info(f'seed {seed}: Python, NumPy, Paddle and the reader workers are seeded')

    trainer = RTDETRTrainer(cfg, mode='train')
    if args.resume is not None:
        trainer.resume_weights(args.resume)
    elif cfg.get('pretrain_weights'):
        trainer.load_weights(cfg.pretrain_weights)
    trainer.train(args.eval)


if __name__ == '__main__':
    main()
