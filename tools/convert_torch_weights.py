"""Convert the authors' PyTorch RT-DETRv2 checkpoint to .pdparams for one of our configs.

    python tools/convert_torch_weights.py --src rtdetrv2_r18vd_120e_coco_ema.pth \
        --config configs/rtdetrv2/rtdetrv2_r18vd_120e_coco.yml --out rtdetrv2_r18vd_120e_coco.pdparams

The .pth is read without torch and without running any pickled code (see ppdet_rtdetr/convert/torch_zip.py).
Every torch entry that does not fit the config's model is reported by name; the conversion is refused
unless --allow_partial, which saves what fits (the rest keeps the model's initialisation when loaded).
"""
import argparse
import sys

from ppdet_rtdetr.convert import CheckpointError, convert_checkpoint


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--src', required=True, help='PyTorch checkpoint (.pth: ema.module, model or a state dict)')
    parser.add_argument('--config', required=True, help='our YAML config of the same model')
    parser.add_argument('--out', required=True, help='output .pdparams')
    parser.add_argument('--allow_partial', action='store_true', help='save what fits even if some keys do not')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        conversion = convert_checkpoint(args.src, args.config, args.out, args.allow_partial)
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(conversion.report())
    print(f'saved {args.out}' + ('' if conversion.complete else ' (partial)'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
