"""How large an image xcos agrees to decode (torch-free, so the command line can import it)."""

from __future__ import annotations

from xcos.errors import ImageTooLargeError

#: The most pixels an image may have to be decoded (``--max-pixels``): 40 MP, a 7300 x 5500
#: photo. Checked from the header, so that a small compressed file (a 445 KB PNG of 12000 x
#: 12000 grey pixels) is refused before it takes gigabytes and seconds to decode.
DEFAULT_MAX_PIXELS = 40_000_000


def check_pixels(size: tuple[int, int], name: str, max_pixels: int | None) -> None:
    """Raise ``ImageTooLargeError`` when an image of ``size`` (width, height) has more than
    ``max_pixels`` pixels (None: no limit)."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"image {name!r} is {width}x{height} = {width * height / 1e6:.1f} megapixels, over "
            f"the limit of {max_pixels / 1e6:g} megapixels (--max-pixels); refused before "
            "decoding it"
        )
