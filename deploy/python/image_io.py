"""Reading an image file safely: its size is checked from the header before anything is decoded.

A decoder allocates what the header declares: a 1 MB PNG declaring 20000x20000 pixels makes OpenCV decode
1.2 GB of pixels (2.7 GB peak, 22 s), a 600-byte JPEG can declare 65000x65000. `read_image` parses the PNG /
JPEG / BMP / WebP header itself (OpenCV 4.5 has no header-only read), refuses a file that declares more than
`max_pixels`, and only then decodes; a file it cannot read is an `ImageError` naming the file and the reason,
so that a folder run can skip it and go on. Needs numpy and OpenCV only (the deploy scripts run without ppdet;
tools/infer.py loads this file too).
"""
import argparse
import math
import os
import struct

import cv2
import numpy as np

__all__ = ['DEFAULT_MAX_PIXELS', 'ImageError', 'image_size', 'read_image', 'parse_max_pixels']

DEFAULT_MAX_PIXELS = 50_000_000  # 8K UHD is 33 MP; decoding 50 MP as 8-bit RGB takes ~150 MB (~300 MB peak)
# no image within a pixel limit needs a bigger file: 16-bit RGBA stored uncompressed is 8 bytes a pixel, and
# EXIF / ICC / XMP metadata rarely reach a few MB; the file is read whole, so this bounds that read too
_BYTES_PER_PIXEL, _METADATA_BYTES = 8, 64 << 20
# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic): each
# carries the frame's height and width. 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) are not frames.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# markers without a length field: TEM and the restart markers RST0..7
_JPEG_STANDALONE = {0x01} | set(range(0xD0, 0xD8))


class ImageError(ValueError):
    """An image file that cannot be used; the message starts with the file's path and says why."""


def _png_size(data):
    # the 8-byte signature, then the IHDR chunk: length (4), b'IHDR', width, height (big-endian uint32)
    if len(data) < 24 or data[12:16] != b'IHDR':
        raise ValueError('PNG without an IHDR header (truncated or corrupt)')
    return struct.unpack('>II', data[16:24])


def _jpeg_size(data):
    """(width, height) of the first frame header; ValueError if there is none before the scan, or if no
    end-of-image marker follows the scan (a truncated JPEG, which OpenCV would decode as grey, silently)."""
    pos = 2
    size = None
    while True:
        # a marker is 0xFF (possibly repeated as fill) then its code; stray bytes before it are skipped, as
        # libjpeg does (with a warning) when it decodes
        pos = data.find(b'\xff', pos)
        while 0 <= pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if not 0 < pos < len(data):
            raise ValueError('JPEG ends before its image data (truncated or corrupt)')
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0xD9 or pos + 2 > len(data):
            raise ValueError('JPEG ends before its image data (truncated or corrupt)')
        length = struct.unpack('>H', data[pos:pos + 2])[0]
        if marker in _JPEG_SOF and size is None:
            if length < 7 or pos + 7 > len(data):
                raise ValueError('JPEG frame header is truncated')
            height, width = struct.unpack('>HH', data[pos + 3:pos + 7])
            size = width, height
        if marker == 0xDA:  # start of scan: the entropy-coded data follows
            break
        pos += length
    if size is None:
        raise ValueError('JPEG without a frame header before its image data')
    # 0xFF in entropy-coded data is stuffed as FF 00, so FF D9 after the scan is the end-of-image marker
    if data.find(b'\xff\xd9', pos) < 0:
        raise ValueError('JPEG is truncated (no end-of-image marker after the image data)')
    return size


def _bmp_size(data):
    if len(data) < 26:
        raise ValueError('BMP header is truncated')
    if struct.unpack('<I', data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack('<HH', data[18:22])
    width, height = struct.unpack('<ii', data[18:26])
    return abs(width), abs(height)  # a negative height means rows stored top-down


def _webp_size(data):
    chunk = data[12:16]
    if chunk == b'VP8 ' and len(data) >= 30:  # lossy: frame tag (3), start code (3), 14-bit width, height
        width, height = struct.unpack('<HH', data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b'VP8L' and len(data) >= 25:  # lossless: signature 0x2F, then 14 bits width-1, height-1
        bits = struct.unpack('<I', data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b'VP8X' and len(data) >= 30:  # extended: 24-bit canvas width-1, height-1
        return (int.from_bytes(data[24:27], 'little') + 1, int.from_bytes(data[27:30], 'little') + 1)
    raise ValueError('WebP header is truncated or of an unknown kind')


_FORMATS = (('PNG', b'\x89PNG\r\n\x1a\n', _png_size), ('JPEG', b'\xff\xd8\xff', _jpeg_size),
            ('BMP', b'BM', _bmp_size), ('WebP', b'RIFF', _webp_size))


def image_size(data):
    """(format, width, height) that an image file's header declares, nothing decoded.

    Args:
        data (bytes): the file's content.
    Raises:
        ValueError: an empty file, a format other than PNG / JPEG / BMP / WebP, a truncated or corrupt header,
            a zero width or height, or a JPEG cut short (no end-of-image marker).
    """
    if not data:
        raise ValueError('the file is empty (0 bytes)')
    for name, magic, size_of in _FORMATS:
        if data.startswith(magic) and (name != 'WebP' or data[8:12] == b'WEBP'):
            width, height = size_of(data)
            if not (width and height):
                raise ValueError(f'{name} header declares {width}x{height} pixels')
            return name, width, height
    raise ValueError(f'not a PNG, JPEG, BMP or WebP image (the file starts with {data[:12]!r})')


def read_image(path, max_pixels=DEFAULT_MAX_PIXELS, to_rgb=True):
    """An image file decoded to uint8 [h, w, 3] (as ppdet's Decode), once its header passed the size limit.

    Args:
        path (str): the image file.
        max_pixels (int|None): largest width * height accepted; 0 or None: no limit.
        to_rgb (bool): RGB channel order (ppdet's); False keeps OpenCV's BGR.
    Returns:
        np.ndarray: uint8 [h, w, 3]. (h, w) is the header's size (a JPEG's EXIF orientation may swap them).
    Raises:
        ImageError: naming `path`: unreadable, not an image, above `max_pixels` (with the declared size and
            the --max_pixels flag that raises the limit), a file larger than any image within `max_pixels`
            (8 bytes a pixel + 64 MB), or not decodable (corrupt or truncated data).
    """
    try:
        size = os.path.getsize(path)
        if max_pixels and size > _BYTES_PER_PIXEL * max_pixels + _METADATA_BYTES:
            raise ImageError(f'{path}: the file is {size / 2**20:.0f} MB, more than any image of at most '
                             f'{max_pixels / 1e6:g} megapixels takes (8 bytes a pixel + 64 MB of metadata); if the '
                             'image is genuine, raise the limit with --max_pixels (0: no limit)')
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise ImageError(f'{path}: cannot be read ({e.strerror or e})') from None
    try:
        kind, width, height = image_size(data)
    except ValueError as e:
        raise ImageError(f'{path}: {e}') from None
    if max_pixels and width * height > max_pixels:
        raise ImageError(f'{path}: {kind} declares {width}x{height} pixels ({width * height / 1e6:.1f} megapixels), '
                         f'above the limit of {max_pixels / 1e6:g} megapixels; if the image is genuine, raise the '
                         f'limit with --max_pixels (0: no limit)')
    im = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if im is None:
        raise ImageError(f'{path}: {kind} image data cannot be decoded (corrupt or truncated)')
    if sorted(im.shape[:2]) != sorted((height, width)):
        raise ImageError(f'{path}: decoded {im.shape[1]}x{im.shape[0]} pixels, but the {kind} header declares '
                         f'{width}x{height}')
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB) if to_rgb else im


def parse_max_pixels(text):
    """argparse type of --max_pixels: a pixel count, plain or in float notation ('5e7'); 0 disables the limit."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0 and value == int(value)):
        raise argparse.ArgumentTypeError(f'--max_pixels must be a whole number of pixels >= 0 (e.g. 1e8), got {text}')
    return int(value)
