"""Reading and writing the images people actually have, for inference and data tools.

``read_image`` accepts 8- and 16-bit (and float TIFF) files, grayscale, RGB and RGBA, in any format
OpenCV decodes (JPEG, PNG, TIFF, WebP, BMP ...). It returns the colour part as RGB float32 in [0, 1]
(grayscale replicated to 3 channels, because every SSR network takes RGB) and the alpha channel
separately, so that callers super-resolve the colour with the network and upscale alpha on its own
(``upscale_alpha``) before ``write_image`` puts them back together.

Every failure (missing, empty, truncated, corrupt or non-image file) raises an exception whose message
starts with the file name, so a folder run can report it and go on.

EXIF orientation is applied: a phone photo stored sideways with an orientation tag (2-8, e.g. 6 for a
portrait shot) is turned upright on reading, as image viewers show it, for JPEG, PNG (``eXIf`` chunk),
WebP (``EXIF`` chunk) and TIFF (the tag read by Pillow, the pixels decoded by OpenCV, which keeps 16-bit and
float data). Outputs are written upright and without an orientation tag, so they
display the same everywhere. ``LoadedImage.info['exif_orientation']`` keeps the tag that was found.
"""
import io
import os
import os.path as osp
import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from PIL import Image

from ssr_utils.atomic_file import atomic_write

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.webp', '.bmp', '.ppm', '.pgm', '.pnm')


class ImageReadError(ValueError):
    """An input file that cannot be used as an image; the message names the file."""

    def __init__(self, path, problem):
        self.path, self.problem = path, problem
        super().__init__(f'{path}: {problem}')


@dataclass
class LoadedImage:
    """``rgb``: H×W×3 float32 RGB in [0, 1]; ``alpha``: H×W float32 in [0, 1] or None.

    ``bit_depth`` (8, 16 or 32 for float files) and ``gray`` describe the source, so outputs can be
    written in the same kind (see ``write_image``)."""
    rgb: np.ndarray
    alpha: np.ndarray = None
    bit_depth: int = 8
    gray: bool = False
    path: str = ''
    info: dict = field(default_factory=dict)

    @property
    def shape(self):
        return self.rgb.shape[:2]


def list_images(path, recursive=False):
    """The files to process for ``-i path``: the file itself, or every non-hidden regular file of a folder
    (sorted). Files with unknown extensions are listed too, so that a stray non-image is reported by
    name instead of vanishing silently."""
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        raise FileNotFoundError(f'{path}: no such file or folder')
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.')) if recursive else []
        files.extend(osp.join(root, n) for n in sorted(names) if not n.startswith('.'))
    return files


def _check_complete(path, data):
    """Truncation checks where the decoder is lenient (a JPEG cut near its end decodes with a warning)."""
    head = data[:12]
    if head[:3] == b'\xff\xd8\xff':
        # an EOI marker must close the stream; allow a little trailing padding after it
        if b'\xff\xd9' not in data[-1024:]:
            raise ImageReadError(path, 'truncated JPEG (no end-of-image marker)')
    elif head[:8] == b'\x89PNG\r\n\x1a\n':
        if b'IEND' not in data[-64:]:
            raise ImageReadError(path, 'truncated PNG (no IEND chunk)')


ORIENTATION_TAG = 0x0112


def _exif(img):
    """The EXIF directory Pillow read with the header of ``img``. A PNG's ``getexif`` would decode the whole
    image to look for an eXIf chunk behind the pixel data; the chunk that writers put before it is enough here."""
    if img.format != 'PNG':
        return img.getexif()
    exif = Image.Exif()
    if img.info.get('exif'):
        exif.load(img.info['exif'])
    return exif


def exif_orientation(data):
    """EXIF orientation (1-8) of encoded JPEG / PNG / WebP / TIFF bytes, read by Pillow from the file's header
    (the pixels are not decoded); 1 when there is none, the value is out of range or the metadata is damaged."""
    try:
        with warnings.catch_warnings():  # Pillow warns of damaged EXIF blocks, which here just mean "upright"
            warnings.simplefilter('ignore')
            with Image.open(io.BytesIO(data)) as img:
                value = _exif(img).get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 -- not a format Pillow reads, or damaged metadata: keep the stored pixel order
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_orientation(arr, orientation):
    """Turn an H×W(×C) array stored with EXIF ``orientation`` upright (a view where possible)."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:  # transpose
        return np.swapaxes(arr, 0, 1)
    if orientation == 6:  # rotate 90° clockwise
        return np.swapaxes(arr, 0, 1)[:, ::-1]
    if orientation == 7:  # transverse
        return np.swapaxes(arr, 0, 1)[::-1, ::-1]
    if orientation == 8:  # rotate 90° counter-clockwise
        return np.swapaxes(arr, 0, 1)[::-1]
    return arr


def imdecode_upright(data):
    """OpenCV's ``IMREAD_UNCHANGED`` decode (BGR[A] or gray, the file's dtype) turned upright by its EXIF
    orientation. Returns ``(array or None, orientation)``."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    orientation = exif_orientation(data)
    # OpenCV's TIFF decoder applies the orientation tag itself (checked with OpenCV 5.0: all eight values,
    # 8/16-bit and float); for JPEG / PNG / WebP ``IMREAD_UNCHANGED`` leaves it to us
    if arr is not None and data[:4] not in (b'II*\0', b'MM\0*'):
        arr = np.ascontiguousarray(apply_orientation(arr, orientation))
    return arr, orientation


def _to_unit_float(arr, path):
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0, 8
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0, 16
    if arr.dtype in (np.float32, np.float64):
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.clip(arr, 0.0, 1.0), 32
    if arr.dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(arr.dtype)
        return ((arr.astype(np.float32) - info.min) / (info.max - info.min)), 16
    raise ImageReadError(path, f'unsupported pixel type {arr.dtype}')


def decode_image(data, path='<bytes>'):
    """Decode encoded image bytes (see ``read_image``; ``path`` is only used in messages)."""
    if len(data) == 0:
        raise ImageReadError(path, 'empty file (0 bytes)')
    _check_complete(path, data)
    arr, orientation = imdecode_upright(data)
    if arr is None or arr.size == 0:
        raise ImageReadError(path, 'not a decodable image (corrupt, truncated or unsupported format)')
    img, bit_depth = _to_unit_float(arr, path)
    alpha = None
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        gray = True
        rgb = np.repeat(img[..., None], 3, axis=2)
    elif img.shape[2] == 2:  # gray + alpha (OpenCV usually expands these to BGRA, some TIFFs stay 2-channel)
        gray = True
        rgb = np.repeat(img[..., :1], 3, axis=2)
        alpha = img[..., 1]
    elif img.shape[2] in (3, 4):
        rgb = img[..., 2::-1]
        alpha = img[..., 3] if img.shape[2] == 4 else None
        # OpenCV expands gray+alpha PNGs to BGRA: keep them gray on output
        gray = bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))
    else:
        raise ImageReadError(path, f'{img.shape[2]} channels; expected 1 to 4')
    if min(rgb.shape[:2]) < 1:
        raise ImageReadError(path, f'empty image of size {rgb.shape[:2]}')
    return LoadedImage(np.ascontiguousarray(rgb, dtype=np.float32),
                       None if alpha is None else np.ascontiguousarray(alpha, dtype=np.float32), bit_depth, gray, path,
                       info={'exif_orientation': orientation})


def read_image(path):
    """Read ``path`` into a :class:`LoadedImage`; raises FileNotFoundError / ImageReadError naming it."""
    if not osp.exists(path):
        raise FileNotFoundError(f'{path}: no such file')
    if not osp.isfile(path):
        raise ImageReadError(path, 'not a regular file')
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as err:
        raise ImageReadError(path, f'cannot be read ({err.strerror or err})') from None
    return decode_image(data, path)


def image_to_tensor(rgb, device=None, dtype=torch.float32):
    """H×W×3 RGB [0, 1] array -> 1×3×H×W tensor."""
    t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    return t.to(device=device, dtype=dtype)


def tensor_to_image(t):
    """1×3×H×W (or 3×H×W) tensor -> H×W×3 float32 RGB array clipped to [0, 1]."""
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f'tensor_to_image: expected one image, got a batch of {t.shape[0]}')
        t = t[0]
    return t.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)


def upscale_alpha(alpha, size):
    """Alpha H×W in [0, 1] -> ``size`` (H, W), bicubic (as Real-ESRGAN's default for alpha), clipped."""
    out = cv2.resize(alpha.astype(np.float32), (int(size[1]), int(size[0])), interpolation=cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0)


def _quantise(img, bit_depth):
    if bit_depth == 16:
        return (np.clip(img, 0, 1) * 65535.0 + 0.5).astype(np.uint16)
    return (np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def _quantise_channels(chans, bit_depth, chunk_rows=256):
    """Float H×W planes -> one H×W×C (or H×W) integer array, a band of rows at a time, so that a large
    output needs no float copy of its own size on top of the result."""
    h, w = chans[0].shape
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    out = np.empty((h, w, len(chans)) if len(chans) > 1 else (h, w), dtype=dtype)
    for c, chan in enumerate(chans):
        for r in range(0, h, chunk_rows):
            q = _quantise(chan[r:r + chunk_rows], bit_depth)
            if len(chans) > 1:
                out[r:r + chunk_rows, :, c] = q
            else:
                out[r:r + chunk_rows] = q
    return out


def encode_image(rgb, alpha=None, bit_depth=8, gray=False, ext='.png'):
    """Encode an output (H×W×3 RGB float [0, 1], optional H×W alpha) to bytes.

    ``bit_depth`` 16 writes 16-bit PNG/TIFF (float sources are written at 16 bits); JPEG/WebP are 8-bit
    only and drop alpha for JPEG. ``gray`` writes one channel (the mean of R, G, B; SR of a replicated
    gray image keeps the channels nearly equal)."""
    ext = ext.lower()
    depth = 16 if bit_depth in (16, 32) and ext in ('.png', '.tif', '.tiff') else 8
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'encode_image: expected H×W×3 RGB, got shape {rgb.shape}')
    if alpha is not None and alpha.shape != rgb.shape[:2]:
        raise ValueError(f'encode_image: alpha {alpha.shape} does not match the image {rgb.shape[:2]}')
    if ext in ('.jpg', '.jpeg'):
        alpha = None
    if gray:
        chans = [rgb.mean(axis=2)]
    else:
        chans = [rgb[..., 2], rgb[..., 1], rgb[..., 0]]
    if alpha is not None:
        if gray:  # OpenCV writes gray+alpha as BGRA
            chans = chans * 3
        chans.append(alpha)
    arr = _quantise_channels(chans, depth)
    ok, buf = cv2.imencode(ext, arr)
    if not ok:
        raise ValueError(f'encode_image: OpenCV cannot encode {ext} at {depth} bits')
    return buf.tobytes()


def write_image(path, rgb, alpha=None, bit_depth=8, gray=False):
    """Write atomically (temporary file + rename): an interrupted run never leaves a half-written output,
    and an existing file is replaced only by a complete one. Creates the folder."""
    data = encode_image(rgb, alpha, bit_depth, gray, osp.splitext(path)[1] or '.png')
    with atomic_write(path) as f:
        f.write(data)
    return path


def write_loaded_like(path, rgb, source, alpha=None):
    """Write ``rgb`` (and ``alpha``) in the kind of ``source`` (a LoadedImage): same bit depth, gray stays
    gray."""
    return write_image(path, rgb, alpha, bit_depth=source.bit_depth, gray=source.gray)
