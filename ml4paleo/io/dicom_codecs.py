"""DICOM pixel-data decoders through imagecodecs, registered as a pydicom decoder plugin.

pydicom's own plugins for JPEG Lossless need GDCM or pylibjpeg-libjpeg (GPL), and for
JPEG-LS pyjpegls; Pillow cannot read 12-bit JPEG. imagecodecs (a core dependency, BSD)
carries libjpeg-turbo 3 (lossless JPEG, all predictors, 2..16 bits, and 12-bit JPEG) and
CharLS (JPEG-LS), so these syntaxes decode everywhere ml4paleo is installed:

==========================  ===================================  ==================
transfer syntax             UID                                  imagecodecs codec
==========================  ===================================  ==================
JPEG Extended (12-bit)      1.2.840.10008.1.2.4.51               ``jpeg8``
JPEG Lossless (Process 14)  1.2.840.10008.1.2.4.57               ``jpeg8``
JPEG Lossless SV1           1.2.840.10008.1.2.4.70               ``jpeg8``
JPEG-LS Lossless            1.2.840.10008.1.2.4.80               ``jpegls``
JPEG-LS Near-Lossless       1.2.840.10008.1.2.4.81               ``jpegls``
==========================  ===================================  ==================

ml4paleo's DICOM reader registers and uses it; to decode these syntaxes with pydicom
elsewhere, call :func:`register` and pass ``decoding_plugin=PLUGIN`` (or let pydicom pick).

The plugin follows pydicom's decoder-plugin contract (``is_available``,
``DECODER_DEPENDENCIES``, a frame function returning the raw decoded bytes, colour
untransformed); pydicom then applies its usual sign, bit-depth and colour handling.
"""

from __future__ import annotations

import threading
from typing import Any

#: The label of the plugin in pydicom's decoders (``decoding_plugin=PLUGIN``).
PLUGIN = "ml4paleo-imagecodecs"

_JPEG = {
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless",
}
_JPEGLS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
#: Transfer syntaxes this plugin decodes.
SYNTAXES = frozenset(_JPEG) | _JPEGLS
# start-of-frame markers each JPEG syntax may carry
_SOF_ALLOWED = {
    "1.2.840.10008.1.2.4.51": {0xC0, 0xC1},  # baseline / extended sequential DCT
    "1.2.840.10008.1.2.4.57": {0xC3},  # lossless (any predictor)
    "1.2.840.10008.1.2.4.70": {0xC3},  # lossless, predictor 1
}
_SOF_NAMES = {0xC0: "baseline DCT", 0xC1: "extended DCT", 0xC2: "progressive DCT",
              0xC3: "lossless", 0xF7: "JPEG-LS"}

DECODER_DEPENDENCIES = {uid: ("numpy", "imagecodecs>=2024.6.1") for uid in SYNTAXES}

_lock = threading.Lock()
_registered = False


def is_available(uid: str) -> bool:
    """True when imagecodecs is installed with the codec ``uid`` needs."""
    try:
        import imagecodecs
    except ImportError:
        return False
    codec = "JPEG8" if uid in _JPEG else "JPEGLS" if uid in _JPEGLS else None
    return codec is not None and bool(getattr(imagecodecs, codec).available)


def _sof(src: bytes) -> int | None:
    """The start-of-frame marker (0xC0..0xCF, 0xF7) of a JPEG stream, None if not found."""
    i, n = 2, len(src)
    if src[:2] != b"\xff\xd8":
        return None
    while i + 4 <= n:
        if src[i] != 0xFF:
            return None
        marker = src[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xC4, 0xC8, 0xCC):  # DHT, JPG, DAC: not frames
            pass
        elif 0xC0 <= marker <= 0xCF or marker == 0xF7:
            return marker
        if marker == 0xD9 or marker == 0xDA:
            return None
        i += 2 + int.from_bytes(src[i + 2 : i + 4], "big")
    return None


def _describe(sof: int | None) -> str:
    if sof is None:
        return "not a JPEG stream with a frame header"
    return f"{_SOF_NAMES.get(sof, f'SOF marker 0x{sof:02X}')} JPEG"


def _lossless_fallback(src: bytes, first: Exception) -> Any:
    import imagecodecs

    for codec in (imagecodecs.jpegsof3_decode, imagecodecs.ljpeg_decode):
        try:
            return codec(src)
        except Exception:  # noqa: BLE001, S112 - the first decoder's error is the one to report
            continue
    raise first


def decode_frame(src: bytes, runner: Any) -> bytes:
    """Decode one encapsulated frame (pydicom decoder-plugin entry point).

    Raises
    ------
    ValueError
        When the frame is not the kind of JPEG its transfer syntax promises (for
        instance lossy data in a file labelled lossless).
    """
    import imagecodecs
    import numpy as np

    uid = str(runner.transfer_syntax)
    sof = _sof(src)
    if uid in _JPEGLS:
        if sof != 0xF7:
            raise ValueError(f"the frame is not a JPEG-LS stream ({_describe(sof)})")
        arr = imagecodecs.jpegls_decode(src)
        # CharLS returns colour-by-pixel; the container is sized by the stream's precision
        runner.set_option("planar_configuration", 0)
        precision = runner.get_option("jls_precision", runner.bits_stored)
        runner.set_option("bits_allocated", 8 if 0 < precision <= 8 else 16)
    else:
        if sof not in _SOF_ALLOWED[uid]:
            raise ValueError(f"the frame is {_describe(sof)}, not what the {_JPEG[uid]} "
                             f"transfer syntax declares")
        # no colour conversion: pydicom converts YBR to RGB itself
        space = "RGB" if runner.samples_per_pixel == 3 else None
        try:
            arr = imagecodecs.jpeg8_decode(src, colorspace=space, outcolorspace=space)
        except Exception as exc:
            if sof != 0xC3:
                raise
            # lossless streams libjpeg-turbo refuses: two other lossless JPEG decoders
            arr = _lossless_fallback(src, exc)
        runner.set_option("bits_allocated", 8 if arr.dtype.itemsize == 1 else 16)
        if runner.samples_per_pixel > 1:
            runner.set_option("planar_configuration", 0)
    expected = (runner.rows, runner.columns) + ((runner.samples_per_pixel,)
                                                if runner.samples_per_pixel > 1 else ())
    if arr.shape != expected:
        raise ValueError(f"decoded frame has shape {arr.shape}, the header says {expected}")
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def register() -> None:
    """Add the plugin to pydicom's decoders of :data:`SYNTAXES` (idempotent, thread-safe)."""
    global _registered
    if _registered:
        return
    with _lock:
        if _registered:
            return
        from pydicom.pixels import get_decoder

        for uid in sorted(SYNTAXES):
            try:
                get_decoder(uid).add_plugin(PLUGIN, (__name__, "decode_frame"))
            except ValueError:  # already there (e.g. registered by a reloaded module)
                pass
        _registered = True


def uses_plugin(uid: str) -> bool:
    """True when ml4paleo decodes ``uid`` with this plugin (and it is installed)."""
    return str(uid) in SYNTAXES and is_available(str(uid))
