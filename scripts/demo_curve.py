"""Learning curve of a ppdet training log: COCO AP / AP50 after each evaluation vs. iterations and time.

    python scripts/demo_curve.py --log output/demo/train.log --out output/demo/curve.json [--plot curve.png]

Reads the log that `tools/train.py --eval` writes (ppdet's iteration lines, its evaluation lines and
pycocotools' summary). Each evaluation point has the seconds since the first logged iteration (`wall_s`) and
the seconds of training alone (`train_s`: wall time less the evaluations, each from the start of its inference,
timed by ppdet's "average FPS", to its "Best test" line). A Mask-RT-DETR log also holds the segm summary
(pycocotools' "Evaluate annotation type *segm*"): its figures are `segm_ap` / `segm_ap50`, the box ones stay
`ap` / `ap50`. Prints the JSON and a last line with the final AP / AP50 (segm first when present); `--plot`
draws them against training time as a PNG. Exits 1 if the log holds no evaluation.
"""
import argparse
import datetime
import json
import re
import sys

_STAMP = r'^\[(\d\d/\d\d \d\d:\d\d:\d\d)\] '
ITER_RE = re.compile(_STAMP + r'ppdet\.engine INFO: Epoch: \[(\d+)\] \[\s*(\d+)/(\d+)\]')
AP_RE = re.compile(r'Average Precision \s*\(AP\) @\[ IoU=(0\.50:0\.95|0\.50)\s*\| area=\s*all \| maxDets=100 \] = '
                   r'(-?[\d.]+)')
FPS_RE = re.compile(_STAMP + r'.*Total sample number: (\d+), average FPS: ([\d.eE+-]+)')
BEST_RE = re.compile(_STAMP + r'.*Best test ')
TYPE_RE = re.compile(r'Evaluate annotation type \*(\w+)\*')


def _time(stamp):
    return datetime.datetime.strptime(stamp, '%m/%d %H:%M:%S')


def parse(lines):
    """-> {'evaluations': [{epoch, iteration, wall_s, train_s, ap, ap50[, segm_ap, segm_ap50]}],
    'iterations_per_epoch': n}.

    An evaluation ends at its "Best test" line, or, where there is none, at its FPS line.
    """
    start = epoch = iters = None
    iou_type = 'bbox'  # of the summary lines that follow
    eval_total = 0.  # seconds spent in the evaluations already closed
    points, current = [], {}

    def close():
        nonlocal eval_total, current
        if {'ap', 'ap50', 'eval_start', 'end'} <= current.keys():
            eval_start, end_s = current.pop('eval_start'), current.pop('end')
            points.append({'epoch': epoch + 1, 'iteration': (epoch + 1) * iters, 'wall_s': int(round(end_s)),
                           'train_s': int(round(eval_start - eval_total)), **current})
            eval_total += end_s - eval_start
        current = {}

    for line in lines:
        m = ITER_RE.match(line)
        if m:
            close()
            start = start or _time(m.group(1))
            epoch, iters = int(m.group(2)), int(m.group(4))
            continue
        if epoch is None:
            continue
        m = TYPE_RE.search(line)
        if m:
            iou_type = m.group(1)
            continue
        m = AP_RE.search(line)
        if m:
            prefix = 'segm_' if iou_type == 'segm' else ''
            current[prefix + ('ap' if m.group(1) == '0.50:0.95' else 'ap50')] = float(m.group(2))
            continue
        m = FPS_RE.match(line)
        if m:
            current['end'] = (_time(m.group(1)) - start).total_seconds()
            # inference ran for sample_num / FPS seconds before the metric was computed and this line logged
            current['eval_start'] = current['end'] - int(m.group(2)) / float(m.group(3))
            continue
        m = BEST_RE.match(line)
        if m and 'eval_start' in current:
            current['end'] = (_time(m.group(1)) - start).total_seconds()
            close()
    close()
    return {'evaluations': points, 'iterations_per_epoch': iters}


def plot(curve, path):
    """Write AP and AP50 against training seconds as a PNG at `path`."""
    import matplotlib
    matplotlib.use('Agg')  # no display needed
    import matplotlib.pyplot as plt
    points = curve['evaluations']
    seconds = [p['train_s'] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    segm = 'segm_ap' in points[-1]
    box = 'box ' if segm else ''
    ax.plot(seconds, [p['ap50'] for p in points], 'o-', label=box + 'AP50')
    ax.plot(seconds, [p['ap'] for p in points], 's-', label=box + 'AP (0.50:0.95)')
    if segm:
        ax.plot(seconds, [p['segm_ap50'] for p in points], 'o--', label='mask AP50')
        ax.plot(seconds, [p['segm_ap'] for p in points], 's--', label='mask AP (0.50:0.95)')
    ax.set_xlabel('training time (s, evaluations excluded)')
    ax.set_ylabel('COCO AP on the val set')
    ax.set_ylim(0, 1)
    ax.grid(alpha=.3)
    ax.legend(loc='lower right')
    ax.set_title('demo: AP against training time')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--log', required=True, help='training log of tools/train.py --eval')
    parser.add_argument('--out', help='write the JSON here too')
    parser.add_argument('--plot', help='write a PNG of AP / AP50 against training time here')
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
    if args.plot:
        plot(result, args.plot)
    last = result['evaluations'][-1]
    segm = f"segm AP {last['segm_ap']:.3f}  AP50 {last['segm_ap50']:.3f}, bbox " if 'segm_ap' in last else ''
    print(f"final COCO {segm}AP {last['ap']:.3f}  AP50 {last['ap50']:.3f}  after {last['iteration']} iterations, "
          f"{last['train_s']} s of training")
    return 0


if __name__ == '__main__':
    sys.exit(main())
