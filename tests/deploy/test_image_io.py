"""deploy/python/image_io.py: image sizes from headers alone, refusals that name the file and the reason, and
a decompression bomb refused with bounded memory (no model needed: fast)."""
import argparse
import io
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers.bad_images import BAD_IMAGES, png_bytes, sample_jpeg, write_bad_images
from helpers.export_utils import ROOT

DEPLOY_PYTHON = os.path.join(ROOT, 'deploy', 'python')
if DEPLOY_PYTHON not in sys.path:
    sys.path.insert(0, DEPLOY_PYTHON)  # as when a deploy script runs: its shared modules import by name
import image_io  # noqa: E402

RGB = (np.random.RandomState(0).rand(37, 53, 3) * 255).astype('uint8')  # odd sizes: W and H cannot be swapped


def _pil_bytes(fmt, mode='RGB', **kwargs):
    out = io.BytesIO()
    Image.fromarray(RGB).convert(mode).save(out, fmt, **kwargs)
    return out.getvalue()


# every kind of header the parser knows, written by an encoder other than OpenCV's
ENCODED = {
    'png': _pil_bytes('PNG'), 'png_gray_alpha': _pil_bytes('PNG', 'LA'),
    'jpeg': _pil_bytes('JPEG'), 'jpeg_progressive': _pil_bytes('JPEG', progressive=True),
    'jpeg_gray': _pil_bytes('JPEG', 'L'), 'bmp': _pil_bytes('BMP'), 'webp_lossy': _pil_bytes('WEBP'),
    'webp_lossless': _pil_bytes('WEBP', lossless=True), 'webp_alpha': _pil_bytes('WEBP', 'RGBA', lossless=True),
}


@pytest.mark.parametrize('name', list(ENCODED))
def test_header_size_and_pixels_equal_a_full_decode(name, tmp_path):
    data = ENCODED[name]
    kind, width, height = image_io.image_size(data)
    assert (width, height) == (53, 37), f'{name}: header says {width}x{height}'
    assert kind.upper() == name.split('_')[0].upper()
    path = str(tmp_path / f'{name}.img')
    with open(path, 'wb') as f:
        f.write(data)
    want = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)  # what the deploy read before
    np.testing.assert_array_equal(image_io.read_image(path), want)
    np.testing.assert_array_equal(image_io.read_image(path, to_rgb=False), want[..., ::-1])


def test_every_bad_file_is_refused_with_its_path_and_reason(tmp_path):
    for name, reason in write_bad_images(str(tmp_path)).items():
        path = str(tmp_path / name)
        with pytest.raises(image_io.ImageError) as info:
            image_io.read_image(path)
        assert str(info.value).startswith(f'{path}: {reason}'), str(info.value)
    with pytest.raises(image_io.ImageError, match=r'^/no/such/dir/x\.png: cannot be read \(No such file'):
        image_io.read_image('/no/such/dir/x.png')


def test_the_limit_is_width_times_height_and_0_disables_it(tmp_path):
    path = str(tmp_path / 'a.jpg')
    with open(path, 'wb') as f:
        f.write(sample_jpeg(48, 64))
    assert image_io.read_image(path, max_pixels=48 * 64).shape == (48, 64, 3)
    with pytest.raises(image_io.ImageError, match=r'JPEG declares 64x48 pixels \(0\.0 megapixels\), above the limit '
                                                  r'of 0\.003071 megapixels'):
        image_io.read_image(path, max_pixels=48 * 64 - 1)
    assert image_io.read_image(path, max_pixels=0).shape == image_io.read_image(path, max_pixels=None).shape


def test_a_file_too_big_for_any_image_within_the_limit_is_not_read(tmp_path):
    """A 100 MB file (sparse: no disk used) is more than any image of <= 1000 pixels can take (8 bytes a pixel +
    64 MB), refused from its size alone; with no limit it is read, and refused for what it holds (zeros)."""
    path = str(tmp_path / 'big.png')
    with open(path, 'wb') as f:
        f.truncate(100 << 20)
    with pytest.raises(image_io.ImageError, match=r'big\.png: the file is 100 MB, more than any image of at most '
                                                  r'0\.001 megapixels takes \(8 bytes a pixel \+ 64 MB of metadata\)'):
        image_io.read_image(path, max_pixels=1000)
    with pytest.raises(image_io.ImageError, match=r"not a PNG, JPEG, BMP or WebP image \(the file starts with b'\\x00"):
        image_io.read_image(path, max_pixels=0)


def test_jpeg_size_is_the_frame_s_past_thumbnails_stray_bytes_and_trailers(tmp_path):
    """An EXIF-style thumbnail (a whole 8x8 JPEG inside APP1, its own frame header and end marker) does not
    lend its size or its end marker; stray bytes between segments are skipped, as libjpeg does; bytes after the
    end marker (some cameras append data) are no truncation. Each file decodes to the main image's size."""
    main, thumb = sample_jpeg(48, 64), sample_jpeg(8, 8)
    app1 = b'\xff\xe1' + (len(thumb) + 2).to_bytes(2, 'big') + thumb
    cases = {'thumb': main[:2] + app1 + main[2:], 'stray': main[:2] + app1 + b'\x00\x17' + main[2:],
             'trailer': main + b'\x00' * 100}
    for name, data in cases.items():
        assert image_io.image_size(data) == ('JPEG', 64, 48), name
        path = str(tmp_path / f'{name}.jpg')
        with open(path, 'wb') as f:
            f.write(data)
        assert image_io.read_image(path).shape == (48, 64, 3), name
    with pytest.raises(ValueError, match=r'JPEG is truncated \(no end-of-image marker'):
        image_io.image_size(cases['thumb'][:-2])  # the thumbnail's end marker is no end of the image


def test_max_pixels_flag_parses_counts_and_refuses_nonsense():
    assert image_io.parse_max_pixels('1e8') == 100_000_000
    assert image_io.parse_max_pixels('0') == 0
    for text in ('-1', '1.5', 'inf', 'nan', 'many'):
        with pytest.raises(argparse.ArgumentTypeError, match=f'whole number of pixels >= 0 .*, got {text}'):
            image_io.parse_max_pixels(text)


_PEAK = """
import resource, sys
sys.path.insert(0, {deploy!r})
from image_io import ImageError, read_image
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux: the high-water mark
base = peak()
try:
    read_image({path!r})
    print('decoded')
except ImageError as e:
    print('refused', e)
refused = peak() - base
resident = lambda: int(open('/proc/self/statm').read().split()[1]) * 4  # KiB resident now
before = resident()
image = read_image({path!r}, max_pixels=0)  # the control: the same file decoded, held while measured
print(refused // 1024, (resident() - before) // 1024)
"""


def test_a_decompression_bomb_is_refused_without_decoding_it(tmp_path):
    """A 0.3 MB PNG of 8000x8000 (64 MP: an OpenCV decode takes ~190 MB) is refused by its header: the
    process's peak memory grows by under 16 MB, while decoding the same file (the control) grows it >150 MB."""
    path = str(tmp_path / 'bomb.png')
    with open(path, 'wb') as f:
        f.write(png_bytes(8000, 8000, bytes(8000 * (1 + 8000)), gray=True, level=1))
    assert os.path.getsize(path) < 1 << 20
    out = subprocess.run([sys.executable, '-c', _PEAK.format(deploy=DEPLOY_PYTHON, path=path)],
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f'refused {path}: PNG declares 8000x8000 pixels (64.0 megapixels)'), lines
    refused_mb, decoded_mb = map(int, lines[1].split())
    assert refused_mb < 16 and decoded_mb > 150, f'peak memory growth: refused {refused_mb} MB, decoded {decoded_mb} MB'
