"""Image files a reader must refuse, built here byte by byte (independently of deploy/python/image_io.py).

`write_bad_images(folder)` writes one of each and returns {file name: the reason the reader must give};
`png_bytes` writes a PNG of any declared size from raw rows, so that a decompression bomb costs a few KB.
"""
import os
import struct
import zlib

import cv2
import numpy as np

# file name -> what the refusal must say after "<path>: "
BAD_IMAGES = {
    'bomb.png': 'PNG declares 20000x20000 pixels (400.0 megapixels), above the limit of 50 megapixels; '
                'if the image is genuine, raise the limit with --max_pixels (0: no limit)',
    'huge.jpg': 'JPEG declares 65000x65000 pixels (4225.0 megapixels), above the limit of 50 megapixels',
    'truncated.jpg': 'JPEG is truncated (no end-of-image marker after the image data)',
    'cut.png': 'PNG image data cannot be decoded (corrupt or truncated)',
    'empty.jpg': 'the file is empty (0 bytes)',
    'notes.jpg': "not a PNG, JPEG, BMP or WebP image (the file starts with b'these are no')",
}


def _chunk(kind, body):
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bytes(width, height, rows, gray=False, level=6):
    """A PNG declaring `width` x `height` 8-bit pixels whose image data is `rows` (filter byte + pixels per
    row, possibly fewer rows than declared: a truncated stream), deflated at `level`."""
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 0 if gray else 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', ihdr) + _chunk(b'IDAT', zlib.compress(rows, level))
            + _chunk(b'IEND', b''))


def sample_jpeg(h=48, w=64):
    """A genuine baseline JPEG (OpenCV's encoder) of a random RGB image, as bytes."""
    im = (np.random.RandomState(0).rand(h, w, 3) * 255).astype('uint8')
    return cv2.imencode('.jpg', im)[1].tobytes()


def write_bad_images(folder):
    """Write the files of BAD_IMAGES into `folder`; return BAD_IMAGES."""
    jpeg = sample_jpeg()
    sof = jpeg.index(b'\xff\xc0')  # baseline frame header: marker, length (2), precision (1), height, width
    huge = jpeg[:sof + 5] + struct.pack('>HH', 65000, 65000) + jpeg[sof + 9:]
    png = cv2.imencode('.png', (np.random.RandomState(1).rand(40, 60, 3) * 255).astype('uint8'))[1].tobytes()
    contents = {
        # 3 of the 20000 declared rows: a decoder allocates for all of them first
        'bomb.png': png_bytes(20000, 20000, bytes(3 * (1 + 3 * 20000))),
        'huge.jpg': huge,
        'truncated.jpg': jpeg[:len(jpeg) // 2],
        'cut.png': png[:len(png) // 2],
        'empty.jpg': b'',
        'notes.jpg': b'these are not the pixels you are looking for\n',
    }
    for name, data in contents.items():
        with open(os.path.join(folder, name), 'wb') as f:
            f.write(data)
    return BAD_IMAGES
