"""RGB-D scenes with exact depth, composed from real photographs (issue 10; ``docs/scenes.md``).

A scene is 2.5-D: a pinhole camera (random field of view, pitch and roll) looks at a textured ground plane,
a far backdrop plane (sometimes turned) and textured objects with irregular silhouettes (flat or domed)
standing on the ground or floating at random depths. Every surface is textured with a crop of a real
photograph mapped through its exact perspective homography (mip-mapped, so textures stay sharp and
unaliased at the output resolution), and surfaces occlude each other through a z-buffer.

Depth is exact: per pixel, the camera depth ``Z`` of the nearest surface that covers the pixel centre,
returned as normalised inverse depth ``(1/Z - min) / (max - min)`` over the image (1 = near; the
MiDaS/DPT convention, ``docs/interfaces.md`` §4). The image is anti-aliased at silhouettes; a silhouette
is the 0.5 level of its (bilinearly interpolated) coverage, so the depth of a boundary pixel is that of the
surface covering more than half of it, the one that also dominates its colour.

    textures = default_texture_photos('train')          # held-out photographs excluded
    scenes = SceneGenerator(textures, size=(256, 256))
    rgb, depth, meta = scenes.generate(seed=0)           # uint8 H×W×3 RGB, float32 H×W in [0, 1], dict
"""
import functools
import math
import os
import os.path as osp
from dataclasses import asdict, dataclass, fields, replace

import cv2
import numpy as np

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
SHARED_TRAIN_HR = osp.join(ROOT, osp.pardir, 'shared', 'data', 'train_hr')

# Real photographs shipped with scikit-image (no download). ``cat`` is the same picture as ``chelsea``;
# ``clock`` is deliberately motion-blurred; text/page scans and microscopy masks are not photographs of
# surfaces, so they are left out.
SKIMAGE_COLOUR_PHOTOS = ('astronaut', 'rocket', 'immunohistochemistry', 'hubble_deep_field', 'retina',
                         'stereo_motorcycle', 'coffee', 'chelsea')
SKIMAGE_GRAY_PHOTOS = ('brick', 'grass', 'gravel', 'camera', 'moon', 'coins')
# Held out of the training split: chelsea is the demo's inference photograph and coffee is in the demo's
# validation set (scripts/prepare_demo_data.py VAL_PHOTOS); three McMaster photographs join them when
# ../shared/data is present.
TEST_PHOTOS = ('chelsea', 'coffee', 'mcmaster_16', 'mcmaster_17', 'mcmaster_18')
SPLITS = ('train', 'test', 'all')

SHAPES = ('blob', 'superellipse', 'tree', 'ring', 'horse')
BACKDROP, GROUND = 0, 1  # labels of the two planes; objects are 2, 3, ...


# -------------------------------------------------------------------------------------------------
# texture photographs
# -------------------------------------------------------------------------------------------------
class TexturePhoto:
    """A photograph used as a texture: ``name``, ``rgb`` (H×W×3 uint8) and ``gray`` (a grey photograph,
    which scenes may tint). The mip-map pyramid and the detail table are built on first use."""

    def __init__(self, name, rgb, gray=False):
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f'texture {name!r}: expected an H×W×3 uint8 RGB array, got {rgb.dtype} {rgb.shape}')
        if min(rgb.shape[:2]) < 16:
            raise ValueError(f'texture {name!r} is {rgb.shape[0]}×{rgb.shape[1]}; at least 16×16 is needed')
        self.name = str(name)
        self.rgb = np.ascontiguousarray(rgb)
        self.gray = bool(gray)
        self._pyramid = None
        self._detail = None

    def __repr__(self):
        return f'TexturePhoto({self.name!r}, {self.rgb.shape[0]}×{self.rgb.shape[1]}, gray={self.gray})'

    @property
    def shape(self):
        return self.rgb.shape[:2]

    @property
    def pyramid(self):
        """``[level 0, level 1, ...]``: Gaussian pyramid (cv2.pyrDown) of the photograph as RGBA (OpenCV
        warps 4-channel images about 2.5× faster than 3-channel ones), down to about 4 px; level L pixel
        i sits at level-0 coordinate ``2**L * i``."""
        if self._pyramid is None:
            levels = [cv2.cvtColor(self.rgb, cv2.COLOR_RGB2RGBA)]
            while min(levels[-1].shape[:2]) >= 8:
                levels.append(cv2.pyrDown(levels[-1]))
            self._pyramid = levels
        return self._pyramid

    def crop_stats(self, top, left, height, width):
        """(mean, std) of the luma of a crop, from summed-area tables of a 4× smaller copy (O(1))."""
        if self._detail is None:
            luma = cv2.cvtColor(self.rgb, cv2.COLOR_RGB2GRAY)
            h, w = luma.shape
            small = cv2.resize(luma, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA).astype(np.float64)
            sat = np.zeros((small.shape[0] + 1, small.shape[1] + 1, 2))
            sat[1:, 1:, 0] = small.cumsum(0).cumsum(1)
            sat[1:, 1:, 1] = (small * small).cumsum(0).cumsum(1)
            self._detail = (sat, w / small.shape[1], h / small.shape[0])
        sat, fx, fy = self._detail
        y0, x0 = int(top / fy), int(left / fx)
        y1 = max(y0 + 1, min(sat.shape[0] - 1, int(round((top + height) / fy))))
        x1 = max(x0 + 1, min(sat.shape[1] - 1, int(round((left + width) / fx))))
        s = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
        n = (y1 - y0) * (x1 - x0)
        mean = s[0] / n
        return mean, math.sqrt(max(s[1] / n - mean * mean, 0.0))


def _area_downscale(img, max_side):
    h, w = img.shape[:2]
    if max_side and max(h, w) > max_side:
        f = max_side / max(h, w)
        img = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return img


def _skimage_photo(name):
    import skimage.data
    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def texture_photos_from_folder(folder, max_side=640, prefix=''):
    """Every image of ``folder`` (sorted by name) as a :class:`TexturePhoto` named ``prefix + stem``.

    Images larger than ``max_side`` (long side) are area-downscaled, which keeps them sharp per pixel.
    An unreadable file raises ``ValueError`` naming it.
    """
    from ssr_utils.image_io import IMAGE_EXTENSIONS
    if not osp.isdir(folder):
        raise FileNotFoundError(f'texture folder {folder} does not exist')
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    photos = []
    for n in names:
        path = osp.join(folder, n)
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f'cannot read texture photograph {path}')
        photos.append(TexturePhoto(prefix + osp.splitext(n)[0], _area_downscale(img[:, :, ::-1], max_side)))
    return photos


def default_texture_photos(split='train', shared_dir='auto', exclude=(), max_side=640):
    """The default texture photographs of ``split``.

    ``split``: ``'train'`` (every default photograph except :data:`TEST_PHOTOS`), ``'test'`` (only those),
    ``'all'``. Sources: scikit-image's photographs (:data:`SKIMAGE_COLOUR_PHOTOS`,
    :data:`SKIMAGE_GRAY_PHOTOS`) and, when ``shared_dir`` holds them, the McMaster photographs
    (``'auto'``: ``../shared/data/train_hr`` beside the repository; ``None``: none), named
    ``mcmaster_<stem>``. ``exclude``: further names to leave out (e.g. to hold out more photographs).
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    exclude = set(exclude)
    wanted = (lambda n: n not in TEST_PHOTOS) if split == 'train' else \
        (lambda n: n in TEST_PHOTOS) if split == 'test' else (lambda n: True)
    photos = []
    for name in SKIMAGE_COLOUR_PHOTOS + SKIMAGE_GRAY_PHOTOS:
        if wanted(name) and name not in exclude:
            photos.append(TexturePhoto(name, _area_downscale(_skimage_photo(name), max_side),
                                       gray=name in SKIMAGE_GRAY_PHOTOS))
    folder = SHARED_TRAIN_HR if shared_dir == 'auto' else shared_dir
    if folder and osp.isdir(folder):
        photos += [p for p in texture_photos_from_folder(folder, max_side, prefix='mcmaster_')
                   if wanted(p.name) and p.name not in exclude]
    if not photos:
        raise ValueError(f'no texture photographs left for split {split!r} (exclude = {sorted(exclude)})')
    return photos


def _as_texture_photos(textures):
    if isinstance(textures, dict):
        textures = list(textures.items())
    photos = [t if isinstance(t, TexturePhoto) else TexturePhoto(*t) for t in textures]
    if not photos:
        raise ValueError('SceneGenerator needs at least one texture photograph')
    names = [p.name for p in photos]
    if len(set(names)) != len(names):
        raise ValueError(f'texture names must be unique: {names}')
    return photos


# -------------------------------------------------------------------------------------------------
# configuration
# -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneConfig:
    """What a scene draws from; ``(lo, hi)`` pairs are uniform ranges. Lengths are in camera heights
    (the camera stands 1 unit above the ground); angles in degrees."""
    fov_deg: tuple = (45.0, 75.0)            # horizontal field of view
    pitch_deg: tuple = (-10.0, 30.0)         # > 0 looks down: the horizon moves up (out of the image near fov/2)
    roll_deg: tuple = (-6.0, 6.0)
    backdrop_distance: tuple = (6.0, 60.0)   # camera depth of the backdrop on the optical axis
    backdrop_turn_prob: float = 0.4          # probability that the backdrop is turned about the vertical
    backdrop_yaw_deg: tuple = (-50.0, 50.0)
    ground_end_prob: float = 0.3             # probability that the ground stops short of the backdrop
    ground_end_fraction: tuple = (0.3, 0.8)  # ... at this fraction of the backdrop distance (a depth jump)
    num_objects: tuple = (2, 10)             # inclusive
    object_height: tuple = (0.08, 0.8)       # image height of an object, fraction of the image height
    object_aspect: tuple = (0.4, 2.2)        # width / height
    object_turn_prob: float = 0.4
    object_yaw_deg: tuple = (-60.0, 60.0)
    floating_prob: float = 0.15              # objects not standing on the ground
    dome_prob: float = 0.5                   # objects bulging towards the camera (curved, shaded)
    dome_depth: tuple = (0.15, 0.5)          # bulge, fraction of the object's half-size
    shapes: tuple = (('blob', 0.4), ('superellipse', 0.2), ('tree', 0.15), ('ring', 0.1), ('horse', 0.15))
    texture_minify: tuple = (1.0, 2.0)       # photo pixels per output pixel where a surface is nearest
    object_min_minify: float = 0.8           # objects shrink rather than magnify their texture more than this
    min_crop_std: float = 14.0               # texture crops with less luma contrast (0..255) are redrawn
    gain: tuple = (0.75, 1.15)               # per-surface brightness
    tint_prob: float = 0.7                   # grey photographs get a random colour tint
    shading_ambient: tuple = (0.45, 0.8)     # domed objects: ambient part of the Lambertian shading
    shadow: tuple = (0.2, 0.5)               # darkening of the ground under standing objects
    haze: tuple = (0.0, 0.25)                # aerial perspective reached at the backdrop distance
    mip_anisotropy: float = 0.5              # mip level = log2(sigma_max^a * sigma_min^(1-a)) of the footprint

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == 'shapes':
                try:
                    v = tuple((str(name), float(w)) for name, w in v)
                except (TypeError, ValueError):
                    v = None
                if not v or any(n not in SHAPES or w < 0 for n, w in v) or sum(w for _, w in v) <= 0:
                    raise ValueError(f'SceneConfig.shapes: (name, weight) pairs, names from {SHAPES}, weights '
                                     f'>= 0 and not all 0; got {getattr(self, f.name)!r}')
            elif isinstance(f.default, tuple):  # a (lo, hi) range; lists (from YAML/JSON) become tuples
                if not isinstance(v, (tuple, list)) or len(v) != 2 or not v[0] <= v[1]:
                    raise ValueError(f'SceneConfig.{f.name}: expected a (lo, hi) range with lo <= hi, got {v!r}')
                v = tuple(v)
            elif f.name.endswith('_prob') and not 0 <= v <= 1:
                raise ValueError(f'SceneConfig.{f.name}: a probability in [0, 1], got {v!r}')
            object.__setattr__(self, f.name, v)
        if self.num_objects[0] < 0 or any(n != int(n) for n in self.num_objects):
            raise ValueError(f'SceneConfig.num_objects: whole counts >= 0, got {self.num_objects}')
        object.__setattr__(self, 'num_objects', tuple(int(n) for n in self.num_objects))
        if self.backdrop_distance[0] <= 1:
            raise ValueError(f'SceneConfig.backdrop_distance: beyond the camera height 1, got {self.backdrop_distance}')
        if self.texture_minify[0] <= 0 or self.object_min_minify <= 0:
            raise ValueError('SceneConfig.texture_minify / object_min_minify: must be > 0')
        if not 1 <= self.fov_deg[0] <= self.fov_deg[1] <= 150:
            raise ValueError(f'SceneConfig.fov_deg: must lie in [1, 150], got {self.fov_deg}')

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        """The inverse of :meth:`to_dict` (lists from JSON/YAML are accepted for the ranges)."""
        return cls(**d)


# -------------------------------------------------------------------------------------------------
# geometry
# -------------------------------------------------------------------------------------------------
class _Camera:
    """Pinhole at C = (0, 1, 0); world Y up, the ground is Y = 0. Image x right, y down, pixel centres at
    integer coordinates. ``R`` maps camera coordinates (x right, y down, z forward) to world ones."""

    def __init__(self, size, fov_deg, pitch_deg, roll_deg):
        self.h, self.w = size
        self.f = 0.5 * self.w / math.tan(math.radians(fov_deg) / 2)
        self.cx, self.cy = (self.w - 1) / 2, (self.h - 1) / 2
        p, r = math.radians(pitch_deg), math.radians(roll_deg)
        fwd = np.array([0.0, -math.sin(p), math.cos(p)])
        right0, down0 = np.array([1.0, 0.0, 0.0]), np.array([0.0, -math.cos(p), -math.sin(p)])
        right = math.cos(r) * right0 + math.sin(r) * down0
        down = -math.sin(r) * right0 + math.cos(r) * down0
        self.R = np.stack([right, down, fwd], axis=1)
        self.C = np.array([0.0, 1.0, 0.0])
        self.K = np.array([[self.f, 0, self.cx], [0, self.f, self.cy], [0, 0, 1.0]])
        self.P = self.K @ self.R.T  # world direction -> homogeneous image point

    def inv_depth_coeffs(self, normal, point):
        """(a, b, c) with 1/Z = a·x + b·y + c on the plane through ``point`` with ``normal`` (exact: the
        inverse camera depth of a plane is affine in the image coordinates)."""
        n_c = self.R.T @ normal
        s = float(normal @ (point - self.C))
        a, b = n_c[0] / (self.f * s), n_c[1] / (self.f * s)
        return np.array([a, b, n_c[2] / s - a * self.cx - b * self.cy])

    def depth_of(self, X):
        return float((self.R.T @ (X - self.C))[2])

    def project(self, X):
        p = self.P @ (X - self.C)
        return p[:2] / p[2]

    def ray(self, x, y):
        """World direction of pixel (x, y), scaled so that its camera depth is 1."""
        return self.R @ np.array([(x - self.cx) / self.f, (y - self.cy) / self.f, 1.0])

    def plane_homography(self, origin, e1, e2):
        """Image ← plane coordinates (a, b): the world point ``origin + a·e1 + b·e2``."""
        return self.P @ np.stack([e1, e2, origin - self.C], axis=1)

    def to_dict(self):
        return {'focal_px': self.f, 'cx': self.cx, 'cy': self.cy, 'R_cam_to_world': self.R.tolist(),
                'center': self.C.tolist()}


def _affine_map(coeffs, y0, y1, x0, x1):
    a, b, c = coeffs
    xs = np.arange(x0, x1, dtype=np.float64) * a
    ys = np.arange(y0, y1, dtype=np.float64) * b + c
    return (ys[:, None] + xs[None, :]).astype(np.float32)


def _scale_translate(scale, tx=0.0, ty=0.0):
    """Plane coordinates from texture pixels: ``(u·scale + tx, v·scale + ty)``."""
    return np.array([[scale, 0, tx], [0, scale, ty], [0, 0, 1.0]])


def _translate(dx, dy):
    return np.array([[1.0, 0, dx], [0, 1.0, dy], [0, 0, 1.0]])


def _mip_levels(G, y0, y1, x0, x1, anisotropy, step=4):
    """Per-pixel mip level of the texture footprint of ``G`` (texture ← image homography) over a box.

    ``G``'s third row gives 1/Z (the image ← texture homographies here map a texture point to
    ``Z·(x, y, 1)``), so ``wz <= 0`` is at or behind the plane's horizon.

    The Jacobian of a homography varies smoothly, so it is evaluated every ``step`` pixels and
    interpolated: ``log2(sigma_max^a * sigma_min^(1-a))`` of the 2×2 Jacobian.
    """
    h, w = y1 - y0, x1 - x0
    xs = np.arange(x0, x1 + step, step, dtype=np.float64)[None, :]
    ys = np.arange(y0, y1 + step, step, dtype=np.float64)[:, None]
    wz = G[2, 0] * xs + G[2, 1] * ys + G[2, 2]
    u = (G[0, 0] * xs + G[0, 1] * ys + G[0, 2]) / wz
    v = (G[1, 0] * xs + G[1, 1] * ys + G[1, 2]) / wz
    a, b = (G[0, 0] - u * G[2, 0]) / wz, (G[0, 1] - u * G[2, 1]) / wz
    c, d = (G[1, 0] - v * G[2, 0]) / wz, (G[1, 1] - v * G[2, 1]) / wz
    t = a * a + b * b + c * c + d * d
    det = np.abs(a * d - b * c) + 1e-20
    smax = np.sqrt(0.5 * (t + np.sqrt(np.maximum(t * t - 4 * det * det, 0.0)))) + 1e-20
    smin = det / smax
    with np.errstate(divide='ignore', invalid='ignore'):
        level = anisotropy * np.log2(smax) + (1 - anisotropy) * np.log2(smin)
    # at and beyond a plane's horizon (wz <= 0) the footprint is unbounded: the coarsest level
    level = np.where((wz > 0) & np.isfinite(level), level, 64.0).astype(np.float32)
    # cv2.resize's linear interpolation aligns pixel centres: sample i of the coarse grid sits at i*step
    full = cv2.resize(level, (level.shape[1] * step, level.shape[0] * step), interpolation=cv2.INTER_LINEAR)
    off = (step - 1) / 2  # coarse sample i sits at fine pixel i*step + off of the upsampled array
    M = np.array([[1.0, 0, off], [0, 1.0, off]], dtype=np.float32)
    return cv2.warpAffine(full, M, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _fold_reflect101(idx, n):
    """Indices into an axis of length ``n`` under OpenCV's BORDER_REFLECT_101 (mirror tiling, period 2n - 2)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n - 2
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def _warp_tiled(img, M, out_h, out_w):
    """``cv2.warpPerspective(img, M, WARP_INVERSE_MAP, BORDER_REFLECT_101)``: ``img`` mirror-tiled.

    OpenCV samples outside the source pixel by pixel on a slow path (~40× slower than inside), so when
    the footprint leaves the photograph, either the region of the tiling it covers is gathered first
    (modest footprints), or the sampling map is computed here with the mirror folded in (a triangle wave
    of the coordinate, continuous, so bilinear sampling across a fold stays smooth).
    """
    ih, iw = img.shape[:2]
    corners = M @ np.array([[0, out_w - 1, 0, out_w - 1], [0, 0, out_h - 1, out_h - 1], [1.0, 1, 1, 1]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    if np.all(corners[2] > 0):
        u, v = corners[0] / corners[2], corners[1] / corners[2]
        u0, u1 = int(np.floor(u.min())) - 1, int(np.ceil(u.max())) + 2
        v0, v1 = int(np.floor(v.min())) - 1, int(np.ceil(v.max())) + 2
        if u0 >= 0 and v0 >= 0 and u1 <= iw and v1 <= ih:
            return cv2.warpPerspective(img, M, (out_w, out_h), flags=flags, borderMode=cv2.BORDER_REFLECT_101)
        if (u1 - u0) * (v1 - v0) <= 6 * out_h * out_w + 4096:
            tile = np.take(np.take(img, _fold_reflect101(np.arange(v0, v1), ih), 0),
                           _fold_reflect101(np.arange(u0, u1), iw), 1)
            return cv2.warpPerspective(tile, _translate(-u0, -v0) @ M, (out_w, out_h), flags=flags,
                                       borderMode=cv2.BORDER_REPLICATE)
    xs = np.arange(out_w, dtype=np.float64)[None, :]
    ys = np.arange(out_h, dtype=np.float64)[:, None]
    wz = M[2, 0] * xs + M[2, 1] * ys + M[2, 2]
    wz = np.where(np.abs(wz) > 1e-12, wz, 1e-12)  # at a plane's horizon: any texel (alpha is 0 there)
    maps = []
    for row, n in ((M[0], iw), (M[1], ih)):
        c = (row[0] * xs + row[1] * ys + row[2]) / wz
        period = max(2 * n - 2, 1)
        c = np.mod(np.clip(c, -1e12, 1e12), period)
        maps.append(np.minimum(c, period - c).astype(np.float32))
    return cv2.remap(img, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _render_texture(photo, H_img_from_tex, box, anisotropy):
    """uint8 RGBA of ``box`` = (y0, y1, x0, x1) showing ``photo`` through the homography, mirror-tiled and
    trilinearly mip-mapped: a pixel at level l blends the even and the odd pyramid level around l
    (weights 1 - |l - L|), so each level is warped once into an even or an odd image and one
    ``cv2.blendLinear`` mixes them."""
    y0, y1, x0, x1 = box
    h, w = y1 - y0, x1 - x0
    pyr = photo.pyramid
    G = np.linalg.inv(H_img_from_tex)
    level = np.clip(_mip_levels(G, y0, y1, x0, x1, anisotropy), 0, len(pyr) - 1)
    row_lo, row_hi = level.min(1), level.max(1)
    col_lo, col_hi = level.min(0), level.max(0)
    first, last = int(np.floor(row_lo.min())), int(np.ceil(row_hi.max()))
    if first == last:
        return _warp_tiled(pyr[first], _scale_translate(0.5 ** first) @ G @ _translate(x0, y0), h, w)
    parts = [np.zeros((h, w, 4), np.uint8), np.zeros((h, w, 4), np.uint8)]
    even_weight = np.zeros((h, w), np.float32)
    for L in range(first, last + 1):
        rows = np.flatnonzero((row_lo < L + 1) & (row_hi > L - 1))
        cols = np.flatnonzero((col_lo < L + 1) & (col_hi > L - 1))
        if not len(rows) or not len(cols):
            continue
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        dist = np.abs(level[r0:r1, c0:c1] - np.float32(L))
        own = (dist < 1).view(np.uint8)
        # level-L texture pixel i is level-0 coordinate 2^L·i; the sub-box starts at (x0 + c0, y0 + r0)
        M = _scale_translate(0.5 ** L) @ G @ _translate(x0 + c0, y0 + r0)
        cv2.copyTo(_warp_tiled(pyr[L], M, r1 - r0, c1 - c0), own, parts[L % 2][r0:r1, c0:c1])
        if L % 2 == 0:
            cv2.copyTo(1 - dist, own, even_weight[r0:r1, c0:c1])
    return cv2.blendLinear(parts[0], parts[1], even_weight, 1 - even_weight)


# -------------------------------------------------------------------------------------------------
# silhouettes (alpha in [0, 1] on an h×w raster whose borders the shape touches)
# -------------------------------------------------------------------------------------------------
_SUB = 4  # fillPoly sub-pixel bits


def _fill(mask, polys):
    pts = [np.round(np.asarray(p) * (1 << _SUB)).astype(np.int32) for p in polys]
    cv2.fillPoly(mask, pts, 255, lineType=cv2.LINE_AA, shift=_SUB)


def _fit_polygon(pts, h, w):
    """Scale/shift points so that their bounding box spans the raster (pixel edges at -0.5 and size-0.5)."""
    pts = np.asarray(pts, np.float64)
    lo, hi = pts.min(0), pts.max(0)
    return (pts - lo) / np.maximum(hi - lo, 1e-9) * np.array([w, h]) - 0.5


def _star_polygon(rng, n=160, harmonics=6, amp=0.35):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, harmonics + 1):
        r += rng.uniform(0, amp) / k * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = np.maximum(r, 0.25)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


@functools.lru_cache(maxsize=1)
def _horse_mask():
    """scikit-image's horse silhouette (a real one), cropped to its bounding box, 255 inside."""
    import skimage.data
    m = (~skimage.data.horse()).astype(np.uint8) * 255
    ys, xs = np.nonzero(m)
    return np.ascontiguousarray(m[ys.min():ys.max() + 1, xs.min():xs.max() + 1])


def _silhouette(shape, rng, h, w):
    """float32 h×w alpha of ``shape``; the shape reaches every border of the raster."""
    mask = np.zeros((h, w), np.uint8)
    if shape == 'blob':
        _fill(mask, [_fit_polygon(_star_polygon(rng), h, w)])
    elif shape == 'superellipse':
        p = rng.uniform(2.5, 8.0)
        t = np.linspace(0, 2 * np.pi, 160, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        pts = np.stack([np.sign(c) * np.abs(c) ** (2 / p), np.sign(s) * np.abs(s) ** (2 / p)], 1)
        _fill(mask, [_fit_polygon(pts, h, w)])
    elif shape == 'tree':
        crown_h = rng.uniform(0.45, 0.75)
        trunk_w = rng.uniform(0.1, 0.3)
        crown = _fit_polygon(_star_polygon(rng, amp=0.5), h * crown_h, w) + np.array([0.0, 0.0])
        x_mid = (w - 1) / 2
        tw = trunk_w * w / 2
        trunk = np.array([[x_mid - tw, h * crown_h * 0.7], [x_mid + tw, h * crown_h * 0.7],
                          [x_mid + tw, h - 0.5], [x_mid - tw, h - 0.5]])
        _fill(mask, [crown])
        _fill(mask, [trunk])
    elif shape == 'ring':
        outer = _fit_polygon(_star_polygon(rng, amp=0.2), h, w)
        _fill(mask, [outer])
        f = rng.uniform(0.3, 0.55)
        inner = _fit_polygon(_star_polygon(rng, amp=0.2), h * f, w * f) + np.array([w, h]) * (1 - f) / 2
        hole = np.zeros_like(mask)
        _fill(hole, [inner])
        mask = cv2.subtract(mask, hole)
    elif shape == 'horse':
        m = _horse_mask()
        if rng.uniform() < 0.5:
            m = m[:, ::-1]
        mask = cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA)
    else:
        raise ValueError(f'unknown silhouette shape {shape!r}')
    return mask.astype(np.float32) * np.float32(1 / 255)


# -------------------------------------------------------------------------------------------------
# the generator
# -------------------------------------------------------------------------------------------------
class SceneGenerator:
    """Compose RGB-D scenes with exact depth from texture photographs.

    Args:
        textures: :class:`TexturePhoto` objects, ``(name, rgb uint8 H×W×3)`` pairs or a ``{name: rgb}``
            dict (see :func:`default_texture_photos` and :func:`texture_photos_from_folder`).
        size: output ``(H, W)`` (an int for a square).
        config: a :class:`SceneConfig`; keyword ``overrides`` replace its fields.

    ``generate(seed)`` is a pure function of ``seed`` (an int or a sequence of ints, as
    ``numpy.random.default_rng`` takes it), the textures (their order included), ``size`` and ``config``.
    """

    def __init__(self, textures, size=(256, 256), config=None, **overrides):
        self.textures = _as_texture_photos(textures)
        if isinstance(size, (int, np.integer)):
            size = (size, size)
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 16:
            raise ValueError(f'size must be (H, W) with both >= 16, got {size}')
        self.size = size
        self.config = replace(config or SceneConfig(), **overrides)
        self._shape_names = [s for s, _ in self.config.shapes]
        weights = np.array([w for _, w in self.config.shapes], np.float64)
        self._shape_p = weights / weights.sum()

    # -- public ------------------------------------------------------------------------------------
    def generate(self, seed, return_layers=False):
        """One scene: ``(rgb, depth, meta)``.

        ``rgb``: H×W×3 uint8 RGB. ``depth``: H×W float32 normalised inverse depth in [0, 1] (1 = near,
        min-max over the image; exact for the composed geometry). ``meta`` (see ``docs/scenes.md``):
        ``seed``, ``size``, ``inv_depth_range`` ``(lo, hi)`` (the inverse camera depth, in 1/camera-heights,
        is ``lo + depth·(hi − lo)``), ``camera``, ``haze``, ``surfaces`` (one dict per label: kind,
        texture, geometry), ``labels`` (H×W int16: the surface covering each pixel centre; 0 backdrop,
        1 ground, 2+ objects); with ``return_layers`` also ``layers`` (per drawn surface: ``label``,
        ``box`` (y0, y1, x0, x1), its ``alpha`` and ``inv_depth`` over the box, before occlusion).
        """
        cfg = self.config
        rng = np.random.default_rng(seed)
        H, W = self.size
        fov, pitch, roll = rng.uniform(*cfg.fov_deg), rng.uniform(*cfg.pitch_deg), rng.uniform(*cfg.roll_deg)
        cam = _Camera(self.size, fov, pitch, roll)
        canvas = _Canvas(H, W, return_layers)

        backdrop = self._backdrop_geometry(cam, rng)
        ground = self._ground_geometry(cam, rng, backdrop)
        n_obj = int(rng.integers(cfg.num_objects[0], cfg.num_objects[1] + 1))
        objects = [self._place_object(cam, rng, ground, backdrop) for _ in range(n_obj)]
        objects = [o for o in objects if o is not None]
        haze = _Haze(rng.uniform(*cfg.haze), rng.uniform(0.85, 1.05), backdrop['distance'])

        surfaces = [self._draw_backdrop(cam, rng, canvas, backdrop, ground, haze),
                    self._draw_ground(cam, rng, canvas, ground, objects, haze)]
        for obj in sorted(objects, key=lambda o: -o['z_center']):  # far to near (the z-test decides anyway)
            surfaces.append(self._draw_object(cam, rng, canvas, obj, len(surfaces), haze))

        lo, hi = canvas.inv.min(), canvas.inv.max()
        depth = (canvas.inv - lo) / max(hi - lo, np.float32(1e-12))  # the nearest pixel is exactly 1
        lo, hi = float(lo), float(hi)
        g = ground['coeffs']
        meta = {'seed': int(seed) if np.isscalar(seed) else [int(s) for s in seed], 'size': [H, W],
                'inv_depth_range': (lo, hi),
                'camera': dict(cam.to_dict(), fov_deg=fov, pitch_deg=pitch, roll_deg=roll,
                               horizon_row=float(-(g[0] * cam.cx + g[2]) / g[1])),  # ground inverse depth 0
                'haze': haze.strength, 'surfaces': surfaces, 'labels': canvas.label}
        if return_layers:
            meta['layers'] = canvas.layers
        return np.ascontiguousarray(canvas.rgba[..., :3]), np.clip(depth, 0, 1), meta

    # -- shared helpers ----------------------------------------------------------------------------
    def _pick_photo(self, rng):
        return self.textures[int(rng.integers(len(self.textures)))]

    def _colour(self, rng, photo):
        """Per-surface RGBA multiplier: a brightness gain, and a tint for grey photographs."""
        gain = rng.uniform(*self.config.gain)
        draw = rng.uniform(size=4)
        colour = np.ones(3)
        if photo.gray and draw[0] < self.config.tint_prob:
            colour = 1 + 0.7 * (draw[1:] - draw[1:].mean())
        return tuple(float(c) for c in colour * gain) + (1.0,)

    def _crop(self, rng, photo, ch, cw):
        """(top, left) of a ch×cw crop with enough contrast (the best of at most six draws)."""
        ph, pw = photo.shape
        best, best_std = None, -1.0
        for _ in range(6):
            top = int(rng.integers(0, max(1, ph - ch + 1)))
            left = int(rng.integers(0, max(1, pw - cw + 1)))
            mean, std = photo.crop_stats(top, left, min(ch, ph), min(cw, pw))
            if 20 <= mean <= 235 and std >= self.config.min_crop_std:
                return top, left
            if std > best_std:
                best, best_std = (top, left), std
        return best

    @staticmethod
    def _finish(tex, colour, inv, haze, shade=None):
        """Surface colour: gain/tint (saturating), optional shading, aerial perspective from its depth."""
        tex = cv2.multiply(tex, colour)
        if shade is not None:
            tex = np.clip(tex.astype(np.float32) * shade[..., None] + 0.5, 0, 255).astype(np.uint8)
        return haze.apply(tex, inv)

    # -- backdrop ----------------------------------------------------------------------------------
    def _backdrop_geometry(self, cam, rng):
        cfg = self.config
        H, W = self.size
        z_back = rng.uniform(*cfg.backdrop_distance)
        turned = rng.uniform() < cfg.backdrop_turn_prob
        yaw = math.radians(rng.uniform(*cfg.backdrop_yaw_deg)) if turned else 0.0
        anchor = cam.C + z_back * cam.R[:, 2]  # the point of the optical axis at camera depth z_back
        for _ in range(20):  # a turned backdrop must stay well in front of the camera at every corner
            normal = np.array([math.sin(yaw), 0.0, -math.cos(yaw)])
            coeffs = cam.inv_depth_coeffs(normal, anchor)
            invs = [coeffs @ (x, y, 1.0) for x in (0, W - 1) for y in (0, H - 1)]
            if min(invs) > 0.25 * max(invs):
                break
            yaw *= 0.7
        return {'distance': z_back, 'yaw': yaw, 'normal': normal, 'point': anchor, 'coeffs': coeffs}

    def _draw_backdrop(self, cam, rng, canvas, back, ground, haze):
        H, W = self.size
        photo = self._pick_photo(rng)
        colour = self._colour(rng, photo)
        inv = _affine_map(back['coeffs'], 0, H, 0, W)
        rho = rng.uniform(*self.config.texture_minify) * cam.f * float(inv.max())  # photo px per world unit
        normal = back['normal']
        e1 = np.array([-normal[2], 0.0, normal[0]])  # horizontal, along the plane, towards +X
        e2 = np.array([0.0, -1.0, 0.0])
        ph, pw = photo.shape
        origin = back['point'] - rng.uniform(0, pw) / rho * e1 - rng.uniform(0, ph) / rho * e2
        flip = bool(rng.uniform() < 0.5)
        Hm = cam.plane_homography(origin, e1, e2) @ _scale_translate(1 / rho) @ _flip(flip, pw)
        # only the rows the ground does not cover completely
        rows = H if ground['cover'] is None else int(np.flatnonzero(ground['cover'].min(1) < 1).max(initial=-1)) + 1
        canvas.inv[:] = inv
        canvas.add_layer(BACKDROP, (0, H, 0, W), np.ones((H, W), np.float32), inv)
        if rows > 0:
            tex = _render_texture(photo, Hm, (0, rows, 0, W), self.config.mip_anisotropy)
            canvas.rgba[:rows] = self._finish(tex, colour, inv[:rows], haze)
        return {'kind': 'backdrop', 'texture': photo.name, 'flip': flip, 'distance': back['distance'],
                'yaw_deg': math.degrees(back['yaw']), 'normal': normal.tolist(), 'point': back['point'].tolist(),
                'inv_depth_coeffs': back['coeffs'].tolist()}

    # -- ground ------------------------------------------------------------------------------------
    def _ground_geometry(self, cam, rng, back):
        cfg = self.config
        H, W = self.size
        coeffs = cam.inv_depth_coeffs(np.array([0.0, 1.0, 0.0]), np.zeros(3))
        ends = rng.uniform() < cfg.ground_end_prob
        z_end = back['distance'] * rng.uniform(*cfg.ground_end_fraction) if ends else None
        # coverage from signed pixel distances to its two straight boundaries: the crease with the backdrop
        # (1/Z equal) and, when it ends, its far edge (camera depth z_end)
        s1 = coeffs - back['coeffs']
        s2 = coeffs - np.array([0.0, 0.0, 1.0 / z_end if z_end else 0.0])
        d1 = _affine_map(s1 / max(math.hypot(s1[0], s1[1]), 1e-12), 0, H, 0, W)
        d2 = _affine_map(s2 / max(math.hypot(s2[0], s2[1]), 1e-12), 0, H, 0, W)
        cover = np.clip(0.5 + np.minimum(d1, d2), 0, 1)
        visible = bool((cover >= 0.5).any())
        return {'coeffs': coeffs, 'end_depth': z_end, 'cover': cover if visible else None, 'visible': visible}

    def _draw_ground(self, cam, rng, canvas, ground, objects, haze):
        H, W = self.size
        photo = self._pick_photo(rng)
        colour = self._colour(rng, photo)
        angle = rng.uniform(0, 2 * np.pi)
        origin = np.array([rng.uniform(-50, 50), 0.0, rng.uniform(-50, 50)])
        flip = bool(rng.uniform() < 0.5)
        minify = rng.uniform(*self.config.texture_minify)
        shadow = rng.uniform(*self.config.shadow)
        surface = {'kind': 'ground', 'visible': ground['visible'], 'end_depth': ground['end_depth'],
                   'normal': [0.0, 1.0, 0.0], 'point': [0.0, 0.0, 0.0],
                   'inv_depth_coeffs': ground['coeffs'].tolist()}
        if not ground['visible']:
            return surface
        rows = np.flatnonzero(ground['cover'].max(1) > 0)
        y0, y1 = int(rows[0]), int(rows[-1]) + 1
        inv = _affine_map(ground['coeffs'], y0, y1, 0, W)
        cover = ground['cover'][y0:y1]
        rho = minify * cam.f * float(inv.max())
        e1 = np.array([math.cos(angle), 0.0, math.sin(angle)])
        e2 = np.array([-math.sin(angle), 0.0, math.cos(angle)])
        Hm = cam.plane_homography(origin, e1, e2) @ _scale_translate(1 / rho) @ _flip(flip, photo.shape[1])
        tex = cv2.multiply(_render_texture(photo, Hm, (y0, y1, 0, W), self.config.mip_anisotropy), colour)
        for obj in objects:
            if obj['grounded']:
                self._contact_shadow(cam, tex, y0, obj, shadow)
        canvas.composite(GROUND, (y0, y1, 0, W), haze.apply(tex, inv), cover, inv, ztest=False)
        surface.update(texture=photo.name, flip=flip, texture_angle_deg=math.degrees(angle))
        return surface

    def _contact_shadow(self, cam, tex, y0, obj, strength):
        """Darken the ground under a standing object: a soft ellipse on the ground plane."""
        H, W = self.size
        base, e1 = obj['base'], obj['e1']
        e_n = np.array([-e1[2], 0.0, e1[0]])
        ax, an = 0.6 * obj['width'], 0.25 * min(obj['width'], obj['height']) + 1e-3
        ext = [base + sa * 1.6 * ax * e1 + sn * 1.6 * an * e_n for sa in (-1, 1) for sn in (-1, 1)]
        if min(cam.depth_of(p) for p in ext) <= 1e-3:
            return
        pts = np.array([cam.project(p) for p in ext])
        bx0, by0 = np.floor(pts.min(0)).astype(int)
        bx1, by1 = np.ceil(pts.max(0)).astype(int) + 1
        bx0, bx1 = max(bx0, 0), min(bx1, W)
        by0, by1 = max(by0, y0), min(by1, y0 + tex.shape[0])
        if bx0 >= bx1 or by0 >= by1:
            return
        xs = (np.arange(bx0, bx1, dtype=np.float64)[None, :] - cam.cx) / cam.f
        ys = (np.arange(by0, by1, dtype=np.float64)[:, None] - cam.cy) / cam.f
        dirs = [cam.R[i, 0] * xs + cam.R[i, 1] * ys + cam.R[i, 2] for i in range(3)]
        with np.errstate(divide='ignore', invalid='ignore'):
            t = -cam.C[1] / dirs[1]  # ray parameter (= camera depth) at the ground
        px, pz = cam.C[0] + t * dirs[0] - base[0], cam.C[2] + t * dirs[2] - base[2]
        r2 = ((px * e1[0] + pz * e1[2]) / ax) ** 2 + ((px * e_n[0] + pz * e_n[2]) / an) ** 2
        shade = np.where(t > 0, 1 - strength * np.exp(-2.0 * r2), 1.0).astype(np.float32)
        box = tex[by0 - y0:by1 - y0, bx0:bx1]
        box[..., :3] = (box[..., :3] * shade[..., None] + 0.5).astype(np.uint8)

    # -- objects -----------------------------------------------------------------------------------
    def _place_object(self, cam, rng, ground, back):
        """An object's geometry: a card (planar, maybe domed) standing on the ground or floating."""
        cfg = self.config
        H, W = self.size
        shape = self._shape_names[int(rng.choice(len(self._shape_names), p=self._shape_p))]
        frac = math.exp(rng.uniform(math.log(cfg.object_height[0]), math.log(cfg.object_height[1])))
        aspect = math.exp(rng.uniform(math.log(cfg.object_aspect[0]), math.log(cfg.object_aspect[1])))
        turned = rng.uniform() < cfg.object_turn_prob
        yaw = math.radians(rng.uniform(*cfg.object_yaw_deg)) if turned else 0.0
        floating = not ground['visible'] or rng.uniform() < cfg.floating_prob
        dome = bool(rng.uniform() < cfg.dome_prob)
        dome_depth = rng.uniform(*cfg.dome_depth)
        u = rng.uniform(size=3)
        up = np.array([0.0, 1.0, 0.0])
        if not floating:
            # a point of the visible ground: a column, then a row from the ground's top down to just below
            # the image (objects may be cut by the bottom border)
            x = -0.1 * W + 1.2 * W * u[0]
            visible = np.flatnonzero(ground['cover'][:, int(np.clip(round(x), 0, W - 1))] >= 0.5)
            if not len(visible):
                return None
            y = visible[0] + (1.1 * H - visible[0]) * u[1]
            d = cam.ray(x, y)
            if d[1] >= -1e-9:
                return None
            depth = -cam.C[1] / d[1]
            height = frac * H * depth / cam.f
            base = cam.C + depth * d
        else:
            x, y = W * u[0], H * u[1]
            inv = (back['coeffs'] @ (x, y, 1.0)) * (1.15 + u[2] * (6.0 - 1.15))  # in front of the backdrop
            height = frac * H / (inv * cam.f)
            base = cam.C + cam.ray(x, y) / inv - 0.5 * height * up
        width = height * aspect
        e1 = np.array([math.cos(yaw), 0.0, math.sin(yaw)])
        origin = base - 0.5 * width * e1 + height * up  # top-left corner of the card
        depths = [cam.depth_of(origin + a * width * e1 - b * height * up) for a in (0, 1) for b in (0, 1)]
        if min(depths) < 0.05:
            return None
        return {'shape': shape, 'base': base, 'e1': e1, 'width': width, 'height': height, 'yaw': yaw,
                'grounded': not floating, 'dome': dome, 'dome_depth': dome_depth, 'origin': origin,
                'z_center': cam.depth_of(base + 0.5 * height * up), 'z_min': min(depths)}

    def _draw_object(self, cam, rng, canvas, obj, label, haze):
        cfg = self.config
        H, W = self.size
        photo = self._pick_photo(rng)
        colour = self._colour(rng, photo)
        up, e1, e2 = np.array([0.0, 1.0, 0.0]), obj['e1'], np.array([0.0, -1.0, 0.0])
        width, height = obj['width'], obj['height']
        px_per_unit = cam.f / obj['z_min']  # image pixels per world unit where the card is nearest
        ph, pw = photo.shape
        minify = min(rng.uniform(*cfg.texture_minify), ph / (height * px_per_unit), pw / (width * px_per_unit))
        if minify < cfg.object_min_minify:  # the photograph is too small: shrink the object, not magnify it
            k = minify / cfg.object_min_minify
            base = obj['base'] if obj['grounded'] else obj['base'] + 0.5 * (1 - k) * height * up
            width, height, minify = width * k, height * k, cfg.object_min_minify
            obj = dict(obj, base=base, width=width, height=height, origin=base - 0.5 * width * e1 + height * up)
        # the silhouette raster: about one raster pixel per image pixel where the card is nearest
        mh = max(4, min(4 * H, int(math.ceil(height * px_per_unit))))
        mw = max(4, min(4 * W, int(math.ceil(width * px_per_unit))))
        alpha = _silhouette(obj['shape'], rng, mh, mw)
        ambient = rng.uniform(*cfg.shading_ambient)
        light = rng.normal(size=3)
        top, left = self._crop(rng, photo, int(math.ceil(mh * minify)), int(math.ceil(mw * minify)))
        flip = bool(rng.uniform() < 0.5)
        surface = {'kind': 'object', 'shape': obj['shape'], 'grounded': obj['grounded'], 'dome': obj['dome'],
                   'width': width, 'height': height, 'yaw_deg': math.degrees(obj['yaw']),
                   'center_depth': obj['z_center'], 'origin': obj['origin'].tolist(), 'e1': e1.tolist(),
                   'e2': e2.tolist(), 'texture': photo.name, 'flip': flip, 'crop': [top, left], 'minify': minify}
        # image <- raster pixel: raster pixel centres sit at (i + 0.5) · size / n along the card
        H_raster = cam.plane_homography(obj['origin'], e1, e2) @ np.array(
            [[width / mw, 0, 0.5 * width / mw], [0, height / mh, 0.5 * height / mh], [0, 0, 1.0]])
        corners = np.array([cam.project(obj['origin'] + a * width * e1 + b * height * e2)
                            for a in (0, 1) for b in (0, 1)])
        x0, y0 = np.floor(corners.min(0)).astype(int) - 1
        x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
        if x0 >= x1 or y0 >= y1:
            surface['visible'] = False
            return surface
        box = (y0, y1, x0, x1)
        if obj['dome']:
            bulge, shade = self._dome(alpha, obj, mh, mw, ambient, light)
            # the warp fills 0 outside the raster: shading travels as shade - 1 so that the border means 1
            chans = np.dstack([alpha, bulge, shade - 1, np.zeros_like(alpha)])
        else:
            chans = alpha
        warped = cv2.warpPerspective(chans, np.linalg.inv(H_raster) @ _translate(x0, y0), (x1 - x0, y1 - y0),
                                     flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
        coeffs = cam.inv_depth_coeffs(np.cross(e1, e2), obj['origin'])
        inv = _affine_map(coeffs, *box)
        shade = None
        if obj['dome']:  # the surface: along each pixel ray, `bulge` nearer than the card
            inv = (1.0 / np.maximum(1.0 / np.maximum(inv, 1e-9) - warped[..., 1], 1e-6)).astype(np.float32)
            alpha_img, shade = np.ascontiguousarray(warped[..., 0]), warped[..., 2] + 1
        else:
            alpha_img = warped
        # texture: the crop, `minify` photo pixels per raster pixel (crop edges scale onto raster edges)
        raster_from_photo = np.array([[1 / minify, 0, (0.5 - left) / minify - 0.5],
                                      [0, 1 / minify, (0.5 - top) / minify - 0.5], [0, 0, 1.0]])
        tex = _render_texture(photo, H_raster @ raster_from_photo @ _flip(flip, pw), box, cfg.mip_anisotropy)
        covered = canvas.composite(label, box, self._finish(tex, colour, inv, haze, shade), alpha_img, inv,
                                   ztest=True)
        surface.update(visible=covered, inv_depth_coeffs=coeffs.tolist(), box=list(box))
        return surface

    @staticmethod
    def _dome(alpha, obj, mh, mw, ambient, light):
        """(camera-depth reduction in world units, Lambertian shading factor) on the silhouette raster."""
        inside = (alpha >= 0.5).astype(np.uint8)
        dist = cv2.distanceTransform(np.pad(inside, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]  # float32
        r = float(dist.max())
        if r <= 0:
            return np.zeros_like(alpha), np.ones_like(alpha)
        profile = np.sqrt(np.maximum(dist * (2 * r - dist), 0)) * np.float32(1 / r)  # a circular dome, 0..1
        amp = min(obj['dome_depth'] * 0.5 * min(obj['width'], obj['height']), 0.5 * obj['z_min'])
        bulge = profile * np.float32(amp)
        # slopes (world units per world unit, central differences) and the Lambertian term n·l with
        # n ∝ (-gx, -gy, 1) in the card's frame (right, down, towards the camera)
        slope = 0.5 * amp * mw / obj['width']
        gx = cv2.Sobel(profile, cv2.CV_32F, 1, 0, ksize=1, scale=slope)
        gy = cv2.Sobel(profile, cv2.CV_32F, 0, 1, ksize=1, scale=slope)
        light = np.array([light[0], -abs(light[1]), abs(light[2]) + 1.0])  # from above, towards the camera
        light = (light / np.linalg.norm(light)).astype(np.float32)
        lambert = (light[2] - light[0] * gx - light[1] * gy) / np.sqrt(1 + gx * gx + gy * gy)
        flat = ambient + (1 - ambient) * light[2]
        shade = (ambient + (1 - ambient) * np.maximum(lambert, 0)) / flat
        return bulge, np.clip(shade, 0, 1.4).astype(np.float32)


def _flip(flip, width):
    """Texture coordinates of a horizontally mirrored photograph."""
    return np.array([[-1.0, 0, width - 1], [0, 1, 0], [0, 0, 1]]) if flip else np.eye(3)


class _Haze:
    """Aerial perspective: colour mixed towards a light grey-blue by ``strength·(1 − e^(−2Z/Z_b))/(1 − e^−2)``
    (``strength`` reached at the backdrop distance ``Z_b``)."""

    def __init__(self, strength, brightness, z_back):
        self.strength = float(strength)
        self.colour = tuple(float(c) for c in np.clip(np.array([0.78, 0.82, 0.88, 1.0]) * 255 * brightness, 0, 255))
        self.k = np.float32(self.strength / (1 - math.exp(-2.0)))
        self.rate = np.float32(-2.0 / z_back)

    def apply(self, tex, inv):
        if self.strength <= 0:
            return tex
        z = 1.0 / np.maximum(inv, np.float32(1e-6))
        h = np.minimum(self.k * (1 - np.exp(z * self.rate)), np.float32(self.strength))
        fog = np.empty_like(tex)
        fog[:] = np.array(self.colour, np.float32).round().astype(np.uint8)
        return cv2.blendLinear(tex, fog, 1 - h, h)


class _Canvas:
    """The z-buffered composite: RGBA uint8, inverse depth and the label of the surface covering each
    pixel centre."""

    def __init__(self, h, w, keep_layers=False):
        self.rgba = np.zeros((h, w, 4), np.uint8)
        self.inv = np.zeros((h, w), np.float32)
        self.label = np.zeros((h, w), np.int16)
        self.keep_layers = keep_layers
        self.layers = []

    def add_layer(self, label, box, alpha, inv):
        if self.keep_layers:
            self.layers.append({'label': label, 'box': tuple(int(b) for b in box), 'alpha': alpha.copy(),
                                'inv_depth': inv.copy()})

    def composite(self, label, box, rgba, alpha, inv, ztest):
        """Blend a surface over the box. Where it is nearer than the surface covering a pixel centre
        (``ztest``; without it, it is known to be nearer wherever alpha > 0), its coverage ``alpha`` mixes
        the colour; where it covers the centre (alpha >= 0.5) it takes the depth and the label. Returns
        whether it covers any pixel centre."""
        y0, y1, x0, x1 = box
        self.add_layer(label, box, alpha, inv)
        a = np.where(inv > self.inv[y0:y1, x0:x1], alpha, np.float32(0)) if ztest else alpha
        a = np.ascontiguousarray(a, dtype=np.float32)
        dst = self.rgba[y0:y1, x0:x1]
        dst[:] = cv2.blendLinear(rgba, dst, a, 1 - a)
        cover = (a >= 0.5).view(np.uint8)
        cv2.copyTo(inv, cover, self.inv[y0:y1, x0:x1])
        cv2.copyTo(np.full(inv.shape, label, np.int16), cover, self.label[y0:y1, x0:x1])
        return bool(cover.any())
