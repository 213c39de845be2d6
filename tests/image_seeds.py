"""Valid seed files for every image format this Pillow can open, for the decoder fuzz.

Pillow writes most of them (``Image.SAVE``); the formats it only reads (and the stubs whose
writer needs a handler) are built here byte by byte from their plugins' ``_open`` code.
Every seed has the same distinctive size, ``SIZE`` (37 x 23) where the format allows, so
the fuzz can find the header fields that hold the width and height and rewrite them.
Nothing is committed: all bytes are generated.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import numpy as np
from PIL import Image, features

SIZE = (37, 23)


def _noise(mode: str = "RGB", size: tuple[int, int] = SIZE, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgba = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA")
    if mode == "P":
        return rgba.convert("RGB").quantize(16)
    if mode in ("I;16", "I", "F"):
        ramp = np.linspace(0, 65535 if mode != "F" else 1, size[0] * size[1])
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        return Image.fromarray(ramp.reshape(size[1], size[0]).astype(dtype))
    return rgba.convert(mode)


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _animated(fmt: str, **params: object) -> bytes:
    frames = [_noise(seed=i) for i in range(3)]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], **params)


def _exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated
    return _save(_noise(), "JPEG", exif=exif.tobytes())


# (format, variant) -> bytes, for the formats Pillow writes.
WRITTEN: dict[tuple[str, str], Callable[[], bytes]] = {
    ("PNG", "rgb"): lambda: _save(_noise(), "PNG"),
    ("PNG", "rgba"): lambda: _save(_noise("RGBA"), "PNG"),
    ("PNG", "la"): lambda: _save(_noise("LA"), "PNG"),
    ("PNG", "palette-transparency"): lambda: _save(_noise("P"), "PNG", transparency=0),
    ("PNG", "1"): lambda: _save(_noise("1"), "PNG"),
    ("PNG", "i16"): lambda: _save(_noise("I;16"), "PNG"),
    ("PNG", "apng"): lambda: _animated("PNG"),
    ("JPEG", "rgb"): lambda: _save(_noise(), "JPEG"),
    ("JPEG", "cmyk"): lambda: _save(_noise("CMYK"), "JPEG"),
    ("JPEG", "progressive-gray"): lambda: _save(_noise("L"), "JPEG", progressive=True),
    ("JPEG", "exif"): _exif_jpeg,
    ("MPO", "two-frames"): lambda: _animated("MPO"),
    ("GIF", "animated"): lambda: _animated("GIF", duration=50, loop=0),
    ("GIF", "transparency"): lambda: _save(_noise("P"), "GIF", transparency=3),
    ("BMP", "rgb"): lambda: _save(_noise(), "BMP"),
    ("BMP", "rgba"): lambda: _save(_noise("RGBA"), "BMP"),
    ("BMP", "palette"): lambda: _save(_noise("P"), "BMP"),
    ("BMP", "1"): lambda: _save(_noise("1"), "BMP"),
    ("DIB", "rgb"): lambda: _save(_noise(), "DIB"),
    ("TIFF", "raw"): lambda: _save(_noise(), "TIFF"),
    ("TIFF", "lzw-rgba"): lambda: _save(_noise("RGBA"), "TIFF", compression="tiff_lzw"),
    ("TIFF", "deflate-i16"): lambda: _save(
        _noise("I;16"), "TIFF", compression="tiff_adobe_deflate"
    ),
    ("TIFF", "float"): lambda: _save(_noise("F"), "TIFF"),
    ("TIFF", "jpeg-cmyk"): lambda: _save(_noise("CMYK"), "TIFF", compression="jpeg"),
    ("TIFF", "group4"): lambda: _save(_noise("1"), "TIFF", compression="group4"),
    ("TIFF", "packbits-multipage"): lambda: _animated("TIFF", compression="packbits"),
    ("WEBP", "lossy"): lambda: _save(_noise(), "WEBP"),
    ("WEBP", "lossless-rgba"): lambda: _save(_noise("RGBA"), "WEBP", lossless=True),
    ("WEBP", "animated"): lambda: _animated("WEBP"),
    ("AVIF", "rgb"): lambda: _save(_noise(), "AVIF", quality=50),
    ("AVIF", "rgba"): lambda: _save(_noise("RGBA"), "AVIF"),
    ("JPEG2000", "j2k"): lambda: _save(_noise(), "JPEG2000"),
    ("JPEG2000", "jp2-rgba"): lambda: _save(_noise("RGBA"), "JPEG2000", no_jp2=False),
    ("DDS", "rgb"): lambda: _save(_noise(), "DDS"),
    ("DDS", "la"): lambda: _save(_noise("LA"), "DDS"),
    ("DDS", "dxt1"): lambda: _save(_noise(), "DDS", pixel_format="DXT1"),
    ("DDS", "dxt5"): lambda: _save(_noise("RGBA"), "DDS", pixel_format="DXT5"),
    ("DDS", "bc5"): lambda: _save(_noise(), "DDS", pixel_format="BC5"),
    ("ICO", "png"): lambda: _save(_noise("RGBA"), "ICO", sizes=[SIZE]),
    ("ICO", "bmp"): lambda: _save(_noise(), "ICO", sizes=[SIZE], bitmap_format="bmp"),
    ("BLP", "blp2"): lambda: _save(_noise("P"), "BLP"),
    ("BLP", "blp1"): lambda: _save(_noise("P"), "BLP", blp_version="BLP1"),
    ("EPS", "rgb"): lambda: _save(_noise(), "EPS"),
    ("IM", "rgb"): lambda: _save(_noise(), "IM"),
    ("IM", "palette"): lambda: _save(_noise("P"), "IM"),
    ("MSP", "1"): lambda: _save(_noise("1"), "MSP"),
    ("PCX", "rgb"): lambda: _save(_noise(), "PCX"),
    ("PCX", "palette"): lambda: _save(_noise("P"), "PCX"),
    ("PPM", "rgb"): lambda: _save(_noise(), "PPM"),
    ("PPM", "pgm16"): lambda: _save(_noise("I;16"), "PPM"),
    ("PPM", "pbm"): lambda: _save(_noise("1"), "PPM"),
    ("PPM", "pfm"): lambda: _save(_noise("F"), "PPM"),
    ("QOI", "rgba"): lambda: _save(_noise("RGBA"), "QOI"),
    ("SGI", "rgb"): lambda: _save(_noise(), "SGI"),
    ("SGI", "rle-l"): lambda: _save(_noise("L"), "SGI", rle=True),
    ("SPIDER", "float"): lambda: _save(_noise("F"), "SPIDER"),
    ("TGA", "rgba-rle"): lambda: _save(_noise("RGBA"), "TGA", rle=True),
    ("TGA", "palette"): lambda: _save(_noise("P"), "TGA"),
    ("XBM", "1"): lambda: _save(_noise("1"), "XBM"),
}

# --- formats Pillow only reads: headers from their plugins' ``_open`` -------------------


def _pixels(mode: str = "L", size: tuple[int, int] = SIZE) -> bytes:
    return _noise(mode, size).tobytes()


def _cur() -> bytes:
    """ICO's directory with type 2 (cursor), then a BMP info header + pixels + AND mask."""
    dib = _save(_noise(), "BMP")[14:]
    header, pixels = bytearray(dib[:40]), dib[40:]
    struct.pack_into("<i", header, 8, SIZE[1] * 2)  # cursors store height x 2 (mask)
    mask = b"\0" * (((SIZE[0] + 31) // 32) * 4 * SIZE[1])
    entry = struct.pack("<BBBBHHII", SIZE[0], SIZE[1], 0, 0, 1, 1, 40 + len(pixels), 22)
    return struct.pack("<HHH", 0, 2, 1) + entry + bytes(header) + pixels + mask


def _dcx() -> bytes:
    """DCX: magic, frame offsets (0-terminated), then PCX frames."""
    pcx = _save(_noise("P"), "PCX")
    return struct.pack("<III", 987654321, 12, 0) + pcx


def _fits() -> bytes:
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    2",
        f"NAXIS1  = {SIZE[0]:20d}",
        f"NAXIS2  = {SIZE[1]:20d}",
        "END",
    ]
    header = "".join(card.ljust(80) for card in cards).encode()
    header += b" " * (-len(header) % 2880)
    data = _pixels()
    return header + data + b"\0" * (-len(data) % 2880)


def _fli() -> bytes:
    """FLC header, one frame chunk with a 256-colour palette and a raw copy of the pixels."""
    header = bytearray(128)
    struct.pack_into("<IHHHHHH", header, 0, 0, 0xAF12, 1, SIZE[0], SIZE[1], 8, 3)
    struct.pack_into("<I", header, 16, 70)  # speed
    palette = struct.pack("<HBB", 1, 0, 0) + bytes(range(256)) * 3
    pixels = _pixels()
    color = struct.pack("<IH", 6 + len(palette), 4) + palette
    copy = struct.pack("<IH", 6 + len(pixels), 16) + pixels
    body = color + copy
    frame = struct.pack("<IHH8x", 16 + len(body), 0xF1FA, 2) + body
    struct.pack_into("<I", header, 0, 128 + len(frame))
    return bytes(header) + frame


def _ftex() -> bytes:
    pixels = _pixels("RGB")
    head = b"FTEX" + struct.pack("<i2i2i2i", 1, *SIZE, 1, 1, 1, 32)
    return head + struct.pack("<i", len(pixels)) + pixels


def _gbr() -> bytes:
    name = b"seed\0"
    head = struct.pack(">5I", 28 + len(name), 2, *SIZE, 4) + b"GIMP" + struct.pack(">I", 10)
    return head + name + _pixels("RGBA")


def _imt() -> bytes:
    return b"width %d\nheight %d\npixel n8\n\x0c" % SIZE + _pixels()


def _iptc() -> bytes:
    """IPTC/NAA records: layers, size, compression raw, then the pixels as (8, 10)."""

    def field(record: int, dataset: int, data: bytes) -> bytes:
        return struct.pack(">BBBH", 0x1C, record, dataset, len(data)) + data

    head = (
        field(3, 60, b"\x01\x00")  # one layer, no component
        + field(3, 20, struct.pack(">H", SIZE[0]))
        + field(3, 30, struct.pack(">H", SIZE[1]))
        + field(3, 120, b"\x01")  # raw
    )
    return head + field(8, 10, _pixels())


def _mcidas() -> bytes:
    words = [0] * 64
    words[1], words[8], words[9], words[10], words[13], words[33] = 4, *SIZE[::-1], 1, 1, 256
    return struct.pack("!64i", *words) + _pixels()


def _mpeg() -> bytes:
    return b"\x00\x00\x01\xb3" + ((SIZE[0] << 12 | SIZE[1]) << 8).to_bytes(4, "big") + b"\0" * 64


def _pcd() -> bytes:
    """Kodak PhotoCD: the "PCD_" header at 2048; the 768x512 base image from 96 x 2048."""
    header = bytearray(2048 + 1539)
    header[2048:2052] = b"PCD_"
    data = np.random.default_rng(1).integers(0, 256, 768 * 512 * 3 // 2, np.uint8).tobytes()
    return bytes(header) + b"\0" * (96 * 2048 - len(header)) + data


def _pixar() -> bytes:
    header = bytearray(1024)
    header[:4] = b"\x80\xe8\x00\x00"
    struct.pack_into("<HH", header, 416, SIZE[1], SIZE[0])
    struct.pack_into("<HH", header, 424, 14, 2)
    return bytes(header) + _pixels("RGB")


def _psd() -> bytes:
    """Photoshop RGB, no colour data, resources or layers; raw planar channels."""
    head = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, SIZE[1], SIZE[0], 8, 3)
    planes = b"".join(band.tobytes() for band in _noise().split())
    return head + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + planes


def _sun() -> bytes:
    stride = ((SIZE[0] * 8 + 15) // 16) * 2
    rows = b"".join(row.ljust(stride, b"\0") for row in _rows(_pixels(), SIZE[0]))
    return struct.pack(">8I", 0x59A66A95, *SIZE, 8, len(rows), 1, 0, 0) + rows


def _rows(data: bytes, width: int) -> list[bytes]:
    return [data[i : i + width] for i in range(0, len(data), width)]


def _xpm() -> bytes:
    pixels = _noise("P").convert("L").point(lambda v: v >> 6).tobytes()
    rows = [b'"' + bytes(b"abcd"[v] for v in row) + b'",' for row in _rows(pixels, SIZE[0])]
    colours = [
        b'"%c c #%02x%02x%02x",' % (c, i * 60, 0, 255 - i * 60) for i, c in enumerate(b"abc")
    ]
    return b"\n".join(
        [
            b"/* XPM */",
            b"static char *seed[] = {",
            b'"%d %d 4 1",' % SIZE,
            *colours,
            b'"d c None",',
            *rows,
            b"};",
        ]
    )


def _xvthumb() -> bytes:
    return b"P7 332\n#XVVERSION:Version 2.28\n#END_OF_COMMENTS\n%d %d 255\n" % SIZE + _pixels()


def _icns() -> bytes:
    """One 16x16 PNG entry ("icp4"): Pillow writes every size up to 1024 x 1024."""
    png = _save(_noise("RGBA", (16, 16)), "PNG")
    entry = b"icp4" + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def _wmf() -> bytes:
    """A placeable WMF header (bounding box, inch) over a standard metafile header."""
    head = struct.pack("<IHhhhhHI", 0x9AC6CDD7, 0, 0, 0, SIZE[0] * 20, SIZE[1] * 20, 1440, 0)
    head += struct.pack("<H", 0) + b"\x01\x00\x09\x00\x00\x03" + b"\0" * 12
    return head + b"\x03\x00\x00\x00\x00\x00"  # META_EOF


def _emf() -> bytes:
    """An enhanced metafile header: bounds, frame (0.01 mm), the " EMF" signature."""
    header = struct.pack("<II4i4i", 1, 88, 0, 0, *SIZE, 0, 0, 1000, 600) + b" EMF"
    return header + b"\0" * 44


READ_ONLY: dict[tuple[str, str], Callable[[], bytes]] = {
    ("CUR", "bmp"): _cur,
    ("ICNS", "png"): _icns,
    ("DCX", "pcx"): _dcx,
    ("FITS", "8-bit"): _fits,
    ("FLI", "flc"): _fli,
    ("FTEX", "uncompressed"): _ftex,
    ("GBR", "rgba"): _gbr,
    ("IMT", "n8"): _imt,
    ("IPTC", "raw"): _iptc,
    ("MCIDAS", "8-bit"): _mcidas,
    ("MPEG", "sequence-header"): _mpeg,
    ("PCD", "base"): _pcd,
    ("PIXAR", "rgb"): _pixar,
    ("PSD", "rgb"): _psd,
    ("SUN", "8-bit"): _sun,
    ("XPM", "palette"): _xpm,
    ("XVTHUMB", "332"): _xvthumb,
    ("WMF", "placeable"): _wmf,
    ("WMF", "emf"): _emf,
    # Stubs: Pillow identifies them; without a registered handler they cannot be loaded.
    ("BUFR", "stub"): lambda: b"BUFR" + b"\0" * 60,
    ("GRIB", "stub"): lambda: b"GRIB\0\0\0\x01" + b"\0" * 60,
    ("HDF5", "stub"): lambda: b"\x89HDF\r\n\x1a\n" + b"\0" * 60,
}

# Written only where this Pillow was built with the codec.
CODECS = {"AVIF": "avif", "WEBP": "webp", "JPEG2000": "jpg_2000", "TIFF": "libtiff"}


def seeds() -> dict[tuple[str, str], bytes]:
    """Every seed this Pillow can have: (format Pillow reports when opening it, variant)."""
    found = {}
    for (fmt, variant), make in {**WRITTEN, **READ_ONLY}.items():
        codec = CODECS.get(fmt)
        if codec and not features.check(codec):
            continue
        found[fmt, variant] = make()
    return found
