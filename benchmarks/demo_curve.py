"""Learning curve of a ppdet training log: COCO AP / AP50 after each evaluation vs. iterations and wall time.

    python benchmarks/demo_curve.py --log output/demo/train.log --out benchmarks/demo_curve.json

Prints the JSON and a last line with the final AP / AP50. Reads the log that `tools/train.py --eval` writes
(ppdet's iteration lines and pycocotools' summary); exits 1 if the log holds no evaluation.
"""
import argparse
import datetime
import json
import re
import sys

ITER_RE = re.compile(r'^\[(\d\d/\d\d \d\d:\d\d:\d\d)\] ppdet\.engine INFO: Epoch: \[(\d+)\] \[\s*(\d+)/(\d+)\]')
AP_RE = re.compile(r'Average Precision \s*\(AP\) @\[ IoU=(0\.50:0\.95|0\.50)\s*\| area=\s*all \| maxDets=100 \] = '
                   r'(-?[\d.]+)')
EVAL_END_RE = re.compile(r'^\[(\d\d/\d\d \d\d:\d\d:\d\d)\] ppdet\.(?:engine|metrics\.coco_utils) INFO')


def parse(lines):
    """-> dict with the evaluations [{epoch, iteration, wall_s, ap, ap50}], iterations_per_epoch, total wall."""
    start = epoch = iters = last_time = None
    points, current = [], {}
    for line in lines:
        m = ITER_RE.match(line)
        if m:
            t = datetime.datetime.strptime(m.group(1), '%m/%d %H:%M:%S')
            start = start or t
            epoch, iters, last_time = int(m.group(2)), int(m.group(4)), t
            continue
        m = EVAL_END_RE.match(line)
        if m and start is not None:
            last_time = datetime.datetime.strptime(m.group(1), '%m/%d %H:%M:%S')
        m = AP_RE.search(line)
        if m and epoch is not None:
            current['ap' if m.group(1) == '0.50:0.95' else 'ap50'] = float(m.group(2))
            if len(current) == 2:
                points.append({'epoch': epoch + 1, 'iteration': (epoch + 1) * iters,
                               'wall_s': int((last_time - start).total_seconds()), **current})
                current = {}
    return {'evaluations': points, 'iterations_per_epoch': iters}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--log', required=True, help='training log of tools/train.py --eval')
    parser.add_argument('--out', help='write the JSON here too')
    args = parser.parse_args(argv)
    with open(args.log) as f:
        result = parse(f)
    result['log'] = args.log
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    if not result['evaluations']:
        print(f'no COCO evaluation found in {args.log}', file=sys.stderr)
        return 1
    last = result['evaluations'][-1]
    print(f"final COCO AP {last['ap']:.3f}  AP50 {last['ap50']:.3f}  after {last['iteration']} iterations, "
          f"{last['wall_s']} s of training")
    return 0


if __name__ == '__main__':
    sys.exit(main())
