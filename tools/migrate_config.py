"""Write an official PaddleDetection RT-DETR / RT-DETRv2 config as the equivalent config in our module names.

    python tools/migrate_config.py configs/rtdetrv2/rtdetrv2_r50vd_6x_coco.yml -o my_rtdetrv2_r50vd.yml

The official file keeps working as it is (every tool translates it when loading); this is for users who want
to move for good. The new file is self-contained (the `_BASE_` files are merged in) and builds the same model,
readers, optimizer and schedule. Exits 1 with the file, module and key of anything that cannot be carried over.
"""
import argparse
import sys

import ppdet_rtdetr  # noqa: F401  (registers modules: the translation checks our module signatures)
from ppdet_rtdetr.official import OfficialConfigError
from ppdet_rtdetr.official.migrate import migrate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='official RT-DETR(v2) config (its _BASE_ files are read too)')
    parser.add_argument('-o', '--output', required=True, help='the new config file')
    args = parser.parse_args(argv)
    try:
        migrate(args.config, args.output)
    except OfficialConfigError as err:
        print(err, file=sys.stderr)
        return 1
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
