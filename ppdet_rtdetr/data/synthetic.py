"""A deterministic, COCO-format toy detection dataset ("shapes") for demos and smoke tests.

Every image is drawn from its own seed ``(seed, split, index)``, so a split of 20 images starts with
the same 10 images as a split of 10, and the same parameters always give byte-identical annotation
files. Boxes come from the pixel mask each object is drawn with (no anti-aliasing), so a box is
exactly the object's drawn extent, and objects never overlap, so no box is occluded.

With ``instances=True`` (the instance-segmentation demo) objects may overlap: each one is painted over the
ones before it, its annotation gets its exact visible pixels as a COCO RLE ``segmentation``, and its box is the
extent of those pixels; an object keeps at least ``_MIN_VISIBLE`` of its own area visible.
"""
import json
import os

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image, ImageDraw

# Category ids are sparse and do not start at 0 on purpose: the model's class index must go through
# ppdet's catid2clsid mapping, as on real custom datasets (RT-DETR#99, #346).
CATEGORIES = (
    {'id': 3, 'name': 'circle'},
    {'id': 7, 'name': 'square'},
    {'id': 11, 'name': 'triangle'},
    {'id': 20, 'name': 'cross'},
)
# One hue (degrees) per category, jittered per object: colour helps a tiny model learn in minutes,
# shape is what separates neighbouring hues.
_HUES = {3: 0., 7: 220., 11: 120., 20: 50.}
# kind 'polygons': four other classes (a fine-tuning target for a model pretrained on the shapes), each object in
# a random hue, so colour says nothing about the class and only the outline does.
OTHER_CATEGORIES = (
    {'id': 1, 'name': 'pentagon'},
    {'id': 2, 'name': 'star'},
    {'id': 5, 'name': 'diamond'},
    {'id': 6, 'name': 'bar'},
)
_KINDS = {'shapes': CATEGORIES, 'polygons': OTHER_CATEGORIES}
_SPLITS = ('train', 'val')
_EMPTY_EVERY = 8  # image i is empty when i % 8 == 3, so any split of >= 4 images has an empty one
_MAX_OBJECTS = 4
_MIN_VISIBLE = 0.6  # instances=True: the share of an object's own pixels no later object may cover
_FORMAT_VERSION = 1  # bump when the drawing changes, so that old folders are regenerated


def _hsv_to_rgb(hue, sat, val):
    """Map one HSV colour (hue in degrees, sat/val in [0, 1]) to an RGB uint8 triple."""
    c = val * sat
    x = c * (1 - abs((hue / 60.) % 2 - 1))
    m = val - c
    sector = int(hue // 60) % 6
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][sector]
    return tuple(int(round((v + m) * 255)) for v in rgb)


def _background(rng, width, height):
    """Draw a low-saturation textured background: noise, stripes or a gradient.

    Returns:
        np.ndarray: uint8 [h, w, 3]. Saturation stays <= 0.25 so the saturated objects stand out.
    """
    kind = rng.choice(['noise', 'stripes', 'gradient'])
    base = np.array(_hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0, .25), rng.uniform(.35, .75)),
                    dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 'noise':
        shade = rng.normal(0., 18., size=(height, width))
    elif kind == 'stripes':
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 24)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period
        shade = 25. * np.sin(phase)
    else:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = xx * np.cos(angle) + yy * np.sin(angle)
        shade = 60. * (ramp - ramp.mean()) / max(np.ptp(ramp), 1.)
    image = base[None, None, :] + shade[:, :, None]
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _polygon(category_id, cx, cy, radius, angle):
    """Vertices of a square, triangle or cross of circumradius `radius`, rotated by `angle`."""
    if category_id == 7:
        unit = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
        scale = radius / np.sqrt(2)
    elif category_id == 11:
        unit = [(np.cos(a), np.sin(a)) for a in np.deg2rad([-90, 30, 150])]
        scale = radius
    else:
        t = 0.3  # arm half-width, relative to the arm length
        unit = [(t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t), (-t, -1), (t, -1), (t, -t),
                (1, -t), (1, t), (t, t)]
        scale = radius
    cos, sin = np.cos(angle), np.sin(angle)
    return [(cx + scale * (x * cos - y * sin), cy + scale * (x * sin + y * cos)) for x, y in unit]


def _other_polygon(name, cx, cy, radius, angle):
    """Vertices of a pentagon, five-pointed star, diamond (rhombus 1:0.55) or bar (3:1 rectangle), circumradius
    `radius`, rotated by `angle`."""
    if name == 'pentagon':
        unit = [(np.cos(a), np.sin(a)) for a in np.deg2rad(np.arange(5) * 72. - 90)]
    elif name == 'star':
        unit = [(r * np.cos(a), r * np.sin(a))
                for a, r in zip(np.deg2rad(np.arange(10) * 36. - 90), [1., .45] * 5)]
    elif name == 'diamond':
        unit = [(0, 1), (.55, 0), (0, -1), (-.55, 0)]
    else:
        unit = [(x * .95, y * .32) for x, y in [(1, 1), (-1, 1), (-1, -1), (1, -1)]]
    cos, sin = np.cos(angle), np.sin(angle)
    return [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in unit]


def _object_mask(category_id, width, height, cx, cy, radius, angle, aspect, kind='shapes'):
    """Rasterise one object as a boolean mask [h, w] (no anti-aliasing, so the mask is exact)."""
    mask = Image.new('L', (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if kind == 'polygons':
        name = {c['id']: c['name'] for c in OTHER_CATEGORIES}[category_id]
        draw.polygon(_other_polygon(name, cx, cy, radius, angle), fill=1)
    elif category_id == 3:
        rx, ry = radius * aspect, radius / aspect
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    else:
        draw.polygon(_polygon(category_id, cx, cy, radius, angle), fill=1)
    return np.asarray(mask, dtype=bool)


def mask_to_box(mask):
    """Tight box of a boolean mask [h, w] as COCO ``[x, y, w, h]`` in pixel-edge coordinates.

    Pixel column i covers [i, i + 1), so a mask filling columns 2..5 gives x = 2, w = 4.
    """
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]


def _visible_after(masks, new_mask):
    """The masks of earlier objects once `new_mask` is painted over them, or None if one would keep less than
    ``_MIN_VISIBLE`` of its own pixels (or `new_mask` adds too few of its own)."""
    covered = [m & ~new_mask for m in masks]
    if any(c.sum() < _MIN_VISIBLE * m.sum() for c, m in zip(covered, masks)) or new_mask.sum() < 16:
        return None
    return covered


def render_image(seed, split, index, size, kind='shapes', instances=False):
    """Draw image `index` of `split`: a deterministic function of its arguments.

    Args:
        seed (int): dataset seed.
        split (str): 'train' or 'val' (each split has its own random stream).
        index (int): image index inside the split, from 0.
        size (int): nominal image side; width and height are drawn from [0.8, 1.25] * size and
            always differ (non-square).
        kind (str): 'shapes' (``CATEGORIES``, one hue per class) or 'polygons' (``OTHER_CATEGORIES``,
            random hues).
        instances (bool): objects may overlap (module docstring); False draws exactly what it always drew.

    Returns:
        tuple: (image, objects). image is uint8 [h, w, 3] RGB; objects is a list of
        (category_id, colour, mask) with colour an RGB triple and mask a boolean [h, w] of exactly
        the pixels painted in that colour (what is visible of the object). Masks are disjoint, 0 to 4 per image.
    """
    if kind not in _KINDS:
        raise ValueError(f"synthetic dataset: unknown kind '{kind}', expected one of {list(_KINDS)}")
    categories = _KINDS[kind]
    rng = np.random.default_rng([seed, _SPLITS.index(split), index])
    width = int(round(size * rng.uniform(.8, 1.25)))
    height = int(round(size * rng.uniform(.8, 1.25)))
    if height == width:
        height += 1
    image = _background(rng, width, height)
    count = 0 if index % _EMPTY_EVERY == 3 else int(rng.integers(1, _MAX_OBJECTS + 1))

    objects = []
    occupied = np.zeros((height, width), dtype=bool)
    short_side = min(width, height)
    for _ in range(count * 20):  # rejection sampling; a crowded image keeps fewer objects
        if len(objects) == count:
            break
        category_id = categories[rng.integers(len(categories))]['id']
        radius = rng.uniform(.09, .2) * short_side
        aspect = rng.uniform(.8, 1.25)
        margin = radius * aspect + 1  # the widest extent of any shape (circle: radius * aspect)
        cx = rng.uniform(margin, width - margin)
        cy = rng.uniform(margin, height - margin)
        mask = _object_mask(category_id, width, height, cx, cy, radius,
                            angle=rng.uniform(0, 2 * np.pi), aspect=aspect, kind=kind)
        if instances:
            covered = _visible_after([m for _, _, m in objects], mask)
            if covered is None:
                continue
            objects = [(c, col, m) for (c, col, _), m in zip(objects, covered)]
        else:
            # a 2-pixel gap keeps objects apart after JPEG blurring and keeps every box unoccluded
            grown = np.zeros_like(mask)
            x, y, w, h = mask_to_box(mask)
            grown[max(y - 2, 0):y + h + 2, max(x - 2, 0):x + w + 2] = True
            if (grown & occupied).any():
                continue
            occupied |= grown
        hue = rng.uniform(0, 360) if kind == 'polygons' else (_HUES[category_id] + rng.uniform(-15, 15)) % 360
        colour = _hsv_to_rgb(hue, rng.uniform(.75, 1.), rng.uniform(.8, 1.))
        image[mask] = colour
        objects.append((category_id, colour, mask))
    return image, objects


def mask_to_rle(mask):
    """COCO compressed RLE of a boolean mask [h, w], with `counts` as a str (JSON-writable)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


def _split_paths(out_dir, split):
    return (os.path.join(out_dir, 'annotations', 'instances_{}.json'.format(split)),
            os.path.join(out_dir, 'images', split))


def build_split(out_dir, split, num_images, size, seed, kind='shapes', instances=False):
    """Write the images of one split and return its COCO annotation dict (not yet saved)."""
    _, image_dir = _split_paths(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    # images left over from an earlier, larger run would otherwise show up in `--infer_dir`
    for name in os.listdir(image_dir):
        stem, ext = os.path.splitext(name)
        if ext == '.jpg' and stem.isdigit() and len(stem) == 6 and int(stem) >= num_images:
            os.remove(os.path.join(image_dir, name))
    images, annotations = [], []
    for index in range(num_images):
        image, objects = render_image(seed, split, index, size, kind, instances)
        file_name = '{:06d}.jpg'.format(index)
        Image.fromarray(image).save(os.path.join(image_dir, file_name), quality=95)
        image_id = index + 1
        images.append({'id': image_id, 'file_name': file_name,
                       'height': image.shape[0], 'width': image.shape[1]})
        for category_id, _, mask in objects:
            annotations.append({
                'id': len(annotations) + 1, 'image_id': image_id, 'category_id': category_id,
                'bbox': mask_to_box(mask),
                'area': int(mask.sum()),  # object pixels, as COCO's area is the segment's area
                'iscrowd': 0})
            if instances:
                annotations[-1]['segmentation'] = mask_to_rle(mask)
    return {
        'info': {'description': 'ppdet_rtdetr synthetic shapes',
                 'params': _params(split, num_images, size, seed, kind, instances)},
        'licenses': [],
        'images': images,
        'annotations': annotations,
        'categories': [dict(c, supercategory='shape') for c in _KINDS[kind]],
    }


def _params(split, num_images, size, seed, kind='shapes', instances=False):
    params = {'split': split, 'num_images': num_images, 'size': size, 'seed': seed,
              'format_version': _FORMAT_VERSION}
    if kind != 'shapes':  # the default's parameters, hence its files, stay as they were
        params['kind'] = kind
    if instances:
        params['instances'] = True
    return params


def _is_complete(anno_path, image_dir, params):
    """True when `anno_path` was written with `params` and all its images are on disk."""
    if not os.path.isfile(anno_path):
        return False
    with open(anno_path) as f:
        coco = json.load(f)
    if coco.get('info', {}).get('params') != params:
        return False
    return all(os.path.isfile(os.path.join(image_dir, im['file_name'])) for im in coco['images'])


def make_dataset(out_dir, num_train=200, num_val=40, size=160, seed=0, kind='shapes', instances=False):
    """Write (or keep, when already there with the same parameters) the train and val splits.

    Args:
        out_dir (str): root; gets images/{train,val}/*.jpg and annotations/instances_{train,val}.json.
        num_train (int): number of train images.
        num_val (int): number of val images.
        size (int): nominal image side in pixels (see `render_image`).
        seed (int): dataset seed.
        kind (str): 'shapes' (the demo's classes) or 'polygons' (other classes, random colours).
        instances (bool): overlapping objects with exact instance masks (``segmentation`` as COCO RLE).

    Returns:
        dict: split -> {'anno_path', 'image_dir', 'generated'}; 'generated' is False when the split
        already matched and was skipped.
    """
    result = {}
    for split, num_images in zip(_SPLITS, (num_train, num_val)):
        anno_path, image_dir = _split_paths(out_dir, split)
        done = _is_complete(anno_path, image_dir, _params(split, num_images, size, seed, kind, instances))
        if not done:
            coco = build_split(out_dir, split, num_images, size, seed, kind, instances)
            os.makedirs(os.path.dirname(anno_path), exist_ok=True)
            with open(anno_path, 'w') as f:
                json.dump(coco, f)
        result[split] = {'anno_path': anno_path, 'image_dir': image_dir, 'generated': not done}
    return result
