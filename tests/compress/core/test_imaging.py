import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from compress.core.imaging import decode_bytes, encode, profile_fits, upscale_decoded

RGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
GRAY_ICC = RGB_ICC[:16] + b"GRAY" + RGB_ICC[20:]  # a header that says gray: what the rules read


def nearest_x2(x: np.ndarray) -> np.ndarray:
    return x.repeat(2, axis=-2).repeat(2, axis=-1)


def _file(mode: str, icc: bytes | None, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, len(mode)), dtype=np.uint8)
    img = Image.frombytes(mode, (10, 12), pixels.tobytes())
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"icc_profile": icc} if icc else {}))
    return buf.getvalue()


def _out_profile(data: bytes) -> bytes | None:
    return Image.open(io.BytesIO(data)).info.get("icc_profile")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_an_embedded_colour_profile_reaches_the_output(fmt):
    out = upscale_decoded(nearest_x2, decode_bytes(_file("RGB", RGB_ICC)), 2)
    assert out.size == (20, 24) and _out_profile(encode(out, fmt)) == RGB_ICC


def test_without_a_profile_the_output_has_none():
    assert _out_profile(encode(upscale_decoded(nearest_x2, decode_bytes(_file("RGB", None)), 2), "png")) is None


def test_a_gray_profile_stays_with_gray_output_and_is_dropped_where_alpha_is_composited_to_rgb():
    decoded = decode_bytes(_file("LA", GRAY_ICC))
    out = upscale_decoded(nearest_x2, decoded, 2)
    assert out.mode == "LA" and _out_profile(encode(out, "png")) == GRAY_ICC
    assert _out_profile(encode(out, "jpeg")) is None  # JPEG: composited on white as RGB
    assert _out_profile(encode(out, "webp")) is None  # PIL writes gray WebP as RGB(A)
    gray = upscale_decoded(nearest_x2, decode_bytes(_file("L", GRAY_ICC)), 2)
    assert gray.mode == "L" and _out_profile(encode(gray, "jpeg")) == GRAY_ICC
    assert profile_fits(GRAY_ICC, "L") and not profile_fits(GRAY_ICC, "RGB") and profile_fits(RGB_ICC, "RGBA")


def test_a_cmyk_profile_is_not_carried_to_the_rgb_output():
    decoded = decode_bytes(_file("CMYK", RGB_ICC[:16] + b"CMYK" + RGB_ICC[20:], "JPEG"))
    assert decoded.mode == "CMYK" and decoded.icc_profile is None
    assert _out_profile(encode(upscale_decoded(nearest_x2, decoded, 2), "png")) is None


def test_a_16_bit_gray_image_keeps_its_profile():
    img = Image.fromarray(np.arange(120, dtype=np.uint16).reshape(12, 10) * 500)
    assert img.mode.startswith("I;16")
    buf = io.BytesIO()
    img.save(buf, format="PNG", icc_profile=GRAY_ICC)
    out = upscale_decoded(nearest_x2, decode_bytes(buf.getvalue()), 2)
    assert out.mode == "L" and _out_profile(encode(out, "png")) == GRAY_ICC
