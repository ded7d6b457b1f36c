import glob
import os
import os.path as osp

import cv2
import numpy as np
import pytest

from ssr_utils.image_io import (ImageReadError, encode_image, image_to_tensor, list_images, read_image,
                                tensor_to_image, upscale_alpha, write_image)


def _write(path, arr, params=()):
    ok, buf = cv2.imencode(osp.splitext(path)[1], arr, list(params))
    assert ok
    with open(path, 'wb') as f:
        f.write(buf.tobytes())
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_8bit_rgb_formats_roundtrip(tmp_path, rng):
    bgr = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    for ext in ('.png', '.tif', '.webp', '.bmp'):
        params = (cv2.IMWRITE_WEBP_QUALITY, 101) if ext == '.webp' else ()  # 101 = lossless
        img = read_image(_write(str(tmp_path / f'a{ext}'), bgr, params))
        assert img.rgb.shape == (17, 23, 3) and img.rgb.dtype == np.float32
        assert img.bit_depth == 8 and not img.gray and img.alpha is None
        np.testing.assert_allclose(img.rgb, bgr[..., ::-1] / 255.0, atol=1e-6, err_msg=ext)
    jpg = read_image(_write(str(tmp_path / 'a.jpg'), bgr, (cv2.IMWRITE_JPEG_QUALITY, 95)))
    assert jpg.rgb.shape == (17, 23, 3) and abs(jpg.rgb.mean() - bgr.mean() / 255) < 0.02


def test_16bit_gray_and_alpha(tmp_path, rng):
    g16 = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    img = read_image(_write(str(tmp_path / 'g16.png'), g16))
    assert img.bit_depth == 16 and img.gray and img.alpha is None
    np.testing.assert_allclose(img.rgb[..., 1], g16 / 65535.0, atol=1e-6)
    assert np.array_equal(img.rgb[..., 0], img.rgb[..., 2])

    bgra = rng.integers(0, 65536, (8, 10, 4), dtype=np.uint16)
    img = read_image(_write(str(tmp_path / 'rgba16.png'), bgra))
    assert img.bit_depth == 16 and img.alpha.shape == (8, 10) and not img.gray
    np.testing.assert_allclose(img.alpha, bgra[..., 3] / 65535.0, atol=1e-6)
    np.testing.assert_allclose(img.rgb, bgra[..., 2::-1] / 65535.0, atol=1e-6)
    # written back in kind: 16-bit RGBA, bit-exact
    out = write_image(str(tmp_path / 'out' / 'rgba16.png'), img.rgb, img.alpha, img.bit_depth, img.gray)
    back = cv2.imread(out, cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.shape == (8, 10, 4)
    assert np.array_equal(back, bgra)

    g8 = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    img = read_image(_write(str(tmp_path / 'g8.jpg'), g8, (cv2.IMWRITE_JPEG_QUALITY, 100)))
    assert img.gray and img.bit_depth == 8
    out = write_image(str(tmp_path / 'g8_out.png'), img.rgb, None, img.bit_depth, img.gray)
    assert cv2.imread(out, cv2.IMREAD_UNCHANGED).ndim == 2


def test_float_tiff(tmp_path, rng):
    f = rng.random((7, 8, 3)).astype(np.float32) * 1.2 - 0.1  # out of range values are clipped
    img = read_image(_write(str(tmp_path / 'f.tiff'), f))
    assert img.bit_depth == 32 and img.rgb.min() >= 0 and img.rgb.max() <= 1


@pytest.mark.parametrize('kind', ['empty', 'text', 'truncated_png', 'truncated_jpg', 'garbage_png', 'folder'])
def test_bad_files_name_the_file(tmp_path, rng, kind):
    bgr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path = str(tmp_path / f'bad_{kind}.png')
    if kind == 'empty':
        open(path, 'wb').close()
    elif kind == 'text':
        path = str(tmp_path / 'notes.txt')
        with open(path, 'w') as f:
            f.write('not an image\n')
    elif kind in ('truncated_png', 'truncated_jpg'):
        ext = '.png' if kind == 'truncated_png' else '.jpg'
        data = cv2.imencode(ext, bgr)[1].tobytes()
        path = str(tmp_path / f'cut{ext}')
        with open(path, 'wb') as f:
            f.write(data[:len(data) - 40])  # only the end is missing
    elif kind == 'garbage_png':
        data = bytearray(cv2.imencode('.png', bgr)[1].tobytes())
        data[40:len(data) - 20] = bytes(len(data) - 60)
        with open(path, 'wb') as f:
            f.write(bytes(data))
    elif kind == 'folder':
        os.makedirs(path)
    with pytest.raises(ValueError) as err:
        read_image(path)
    assert osp.basename(path) in str(err.value)
    assert isinstance(err.value, ImageReadError)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match='nope.png'):
        read_image('/nonexistent/nope.png')


def test_list_images_and_tensor_helpers(tmp_path, rng):
    for name in ('b.png', 'a.jpg', '.hidden.png', 'notes.txt'):
        (tmp_path / name).write_bytes(b'x')
    os.makedirs(tmp_path / 'sub')
    (tmp_path / 'sub' / 'c.png').write_bytes(b'x')
    names = [osp.basename(p) for p in list_images(str(tmp_path))]
    assert names == ['a.jpg', 'b.png', 'notes.txt']  # non-images are listed so they get reported
    assert len(list_images(str(tmp_path), recursive=True)) == 4
    with pytest.raises(FileNotFoundError, match='missing_dir'):
        list_images(str(tmp_path / 'missing_dir'))
    rgb = rng.random((5, 6, 3)).astype(np.float32)
    t = image_to_tensor(rgb)
    assert t.shape == (1, 3, 5, 6)
    np.testing.assert_array_equal(tensor_to_image(t), rgb)
    a = upscale_alpha(np.ones((4, 4), np.float32) * 0.5, (16, 16))
    assert a.shape == (16, 16) and np.allclose(a, 0.5)


def test_write_is_atomic_and_jpeg_drops_alpha(tmp_path, rng):
    rgb = rng.random((6, 6, 3)).astype(np.float32)
    path = str(tmp_path / 'o.png')
    write_image(path, rgb)
    assert [p for p in os.listdir(tmp_path) if p.endswith('.tmp')] == []
    with pytest.raises(ValueError, match='alpha'):
        write_image(path, rgb, alpha=np.ones((3, 3), np.float32))
    assert cv2.imread(path) is not None  # the earlier complete output is still there
    data = encode_image(rgb, np.ones((6, 6), np.float32), ext='.jpg')
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape == (6, 6, 3)


def test_shared_odd_inputs(shared_data):
    folder = osp.join(shared_data, 'odd_inputs')
    if not osp.isdir(folder):
        pytest.skip('odd_inputs is not present')
    seen = {}
    for path in sorted(glob.glob(osp.join(folder, '*'))):
        img = read_image(path)
        assert img.rgb.ndim == 3 and img.rgb.shape[2] == 3 and img.rgb.dtype == np.float32
        assert 0 <= img.rgb.min() and img.rgb.max() <= 1
        seen[osp.basename(path)] = img
    if 'wolf_gray.jpg' in seen:
        assert seen['wolf_gray.jpg'].gray and seen['wolf_gray.jpg'].alpha is None
    if 'tree_alpha_16bit.png' in seen:
        assert seen['tree_alpha_16bit.png'].bit_depth == 16 and seen['tree_alpha_16bit.png'].alpha is not None
    if 'children-alpha.png' in seen:
        assert seen['children-alpha.png'].alpha is not None and seen['children-alpha.png'].alpha.min() < 1


# ------------------------------------------------------------------------------- EXIF orientation
def _with_orientation(stored_bgr, fmt, orientation):
    """Encode ``stored_bgr`` (H×W×3 uint8, BGR) with an EXIF orientation tag, written by Pillow."""
    import io
    from PIL import Image
    img = Image.fromarray(np.ascontiguousarray(stored_bgr[..., ::-1]))
    buf = io.BytesIO()
    if fmt == 'TIFF':
        img.save(buf, fmt, tiffinfo={274: orientation})
    else:
        exif = Image.Exif()
        exif[274] = orientation
        extra = {'lossless': True} if fmt == 'WEBP' else {'quality': 95} if fmt == 'JPEG' else {}
        img.save(buf, fmt, exif=exif.tobytes(), **extra)
    return buf.getvalue()


_INVERSE = {6: 8, 8: 6}


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG', 'WEBP', 'TIFF'])
def test_exif_orientation_is_applied(tmp_path, fmt):
    from ssr_utils.image_io import apply_orientation, exif_orientation
    # an upright, clearly asymmetric picture: a gradient with one bright corner block
    yy, xx = np.mgrid[0:24, 0:40]
    upright = np.stack([xx * 6, yy * 10, (xx + yy) * 3], axis=-1).astype(np.uint8)
    upright[:6, :8] = 255
    for orientation in range(1, 9):
        stored = np.ascontiguousarray(apply_orientation(upright, _INVERSE.get(orientation, orientation)))
        data = _with_orientation(stored, fmt, orientation)
        assert exif_orientation(data) == orientation
        path = tmp_path / f'o{orientation}.{fmt.lower()}'
        path.write_bytes(data)
        img = read_image(str(path))
        assert img.rgb.shape == (24, 40, 3), (fmt, orientation)
        assert img.info['exif_orientation'] == orientation
        got = (img.rgb[..., ::-1] * 255).round()
        if fmt == 'JPEG':
            assert np.abs(got - upright).mean() < 4, (fmt, orientation)
            assert got[:6, :8].min() > 200 and got[-6:, -8:].max() < 250  # the bright block is top-left
        else:
            np.testing.assert_array_equal(got, upright, err_msg=f'{fmt} orientation {orientation}')


def test_portrait_phone_photo_comes_out_portrait(tmp_path):
    """The issue's case: a portrait JPEG stored landscape with orientation 6 must give a portrait output."""
    from ssr_utils.image_io import write_loaded_like
    stored = np.zeros((30, 50, 3), np.uint8)  # landscape pixels as the sensor wrote them
    stored[:, :10] = 255  # left edge of the stored frame = top edge of the upright picture (rotated 90° cw)
    path = tmp_path / 'phone.jpg'
    path.write_bytes(_with_orientation(stored, 'JPEG', 6))
    img = read_image(str(path))
    assert img.shape == (50, 30)
    assert img.rgb[:10].mean() > 0.9 and img.rgb[12:].mean() < 0.1
    out = write_loaded_like(str(tmp_path / 'out.png'), img.rgb, img)
    assert cv2.imread(out, cv2.IMREAD_UNCHANGED).shape[:2] == (50, 30)


def test_exif_orientation_big_endian_and_damaged_blocks():
    import io
    from PIL import Image
    from ssr_utils.image_io import exif_orientation

    def jpeg_with_exif(block):
        buf = io.BytesIO()
        Image.new('RGB', (8, 6), (10, 200, 30)).save(buf, 'JPEG', exif=block)
        return buf.getvalue()

    # a big-endian ("MM") EXIF block, written by hand (Pillow itself writes little-endian ones)
    tiff = b'MM\x00\x2a\x00\x00\x00\x08' + b'\x00\x01' + b'\x01\x12\x00\x03\x00\x00\x00\x01\x00\x08\x00\x00' + b'\0' * 4
    jpeg = jpeg_with_exif(b'Exif\x00\x00' + tiff)
    assert exif_orientation(jpeg) == 8
    # out-of-range values and cut-off blocks mean "no orientation", never an exception
    assert exif_orientation(jpeg_with_exif(b'Exif\x00\x00' + tiff.replace(b'\x00\x08\x00\x00', b'\x00\x09\x00\x00', 1))) == 1
    assert exif_orientation(jpeg_with_exif(b'Exif\x00\x00' + tiff[:12])) == 1
    assert exif_orientation(jpeg[:20]) == 1
    assert exif_orientation(b'\x89PNG\r\n\x1a\n') == 1
    assert exif_orientation(b'') == 1
