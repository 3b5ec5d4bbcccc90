"""Convert a Paddle weights file to safetensors or back; the format goes by the file names' suffixes.

    python tools/convert_weights.py output/rtdetr_r50vd/model_final.pdparams rtdetr_r50vd.safetensors
    python tools/convert_weights.py rtdetr_r50vd.safetensors rtdetr_r50vd.pdparams

Any of ``.pdparams`` / ``.pdema`` / ``.pdopt`` converts to and from ``.safetensors`` (an optimizer state keeps
``last_epoch``, the LR scheduler and the other non-tensor values in the safetensors metadata). A pickle is read
with the project's safe loader: one that is not only data is refused, nothing of it run, and there is no
opt-out here. A file listed in a checkpoint manifest is verified first. The output is written atomically
(a temporary file renamed into place); a round trip gives back the same bytes.
"""
import argparse
import os
import sys

from ppdet_rtdetr.engine import checkpoint, manifest, safe_load, safetensors_state

PICKLES = ('.pdparams', '.pdema', '.pdopt')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='input: .pdparams / .pdema / .pdopt / .safetensors')
    parser.add_argument('dst', help='output: .safetensors for a pickle input, else .pdparams / .pdema / .pdopt')
    return parser.parse_args(argv)


def convert(src, dst):
    """Writes the state held in ``src`` to ``dst`` in the other format.

    Raises:
        ValueError: the suffixes are not one ``.safetensors`` and one of ``PICKLES``, or src is dst.
        safe_load.UnsafeWeightsError: ``src`` is a pickle that is not only data (nothing of it ran).
        safe_load.WeightsFileError: ``src`` is missing or unreadable.
        manifest.DamagedCheckpointError: ``src`` differs from its checkpoint manifest.
    """
    to_safetensors = src.endswith(PICKLES) and dst.endswith(safetensors_state.SUFFIX)
    if not to_safetensors and not (src.endswith(safetensors_state.SUFFIX) and dst.endswith(PICKLES)):
        raise ValueError('{} -> {}: convert a {} file to {}, or back (the suffixes choose the format)'.format(
            src, dst, ' / '.join(PICKLES), safetensors_state.SUFFIX))
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError('{}: the output would overwrite the input'.format(dst))
    manifest.verify_file(src)
    state = safe_load.load(src) if to_safetensors else safetensors_state.load(src)
    checkpoint.save_atomic({dst: state})


def main(argv=None):
    args = parse_args(argv)
    try:
        convert(args.src, args.dst)
    except (ValueError, OSError, safe_load.UnsafeWeightsError) as e:
        print('error: {}'.format(e), file=sys.stderr)
        return 1
    print('saved {}'.format(args.dst))
    return 0


if __name__ == '__main__':
    sys.exit(main())
