"""Multipart uploads read into memory within a size limit, never written to disk.

Starlette's ``UploadFile`` spools any part over 1 MB to a temporary file; an uploaded face must
never touch the disk, so the request body is streamed here through python-multipart's parser
and each image part is kept in memory only, counted as it arrives and refused (413) as soon as
it is over the limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import Request

#: The image fields of POST /api/v1/verify.
IMAGE_FIELDS = ("image_a", "image_b")
#: Room for the multipart framing (boundaries, part headers) next to the images themselves.
FRAMING_BYTES = 64 * 1024
MB = 1024 * 1024


def multipart_boundary(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type; 415 for any other type."""
    mime, options = parse_options_header(content_type or "")
    if mime != b"multipart/form-data":
        raise HTTPException(
            415,
            f"expected a multipart/form-data request with the file fields "
            f"{' and '.join(IMAGE_FIELDS)}, got {content_type or 'no content type'!r}",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "multipart/form-data request without a boundary")
    return boundary


def _limit_text(max_bytes: int) -> str:
    return f"the limit of {max_bytes / MB:.3g} MB (--max-upload-mb)"


class _Parts:
    """python-multipart callbacks that keep the parts named in ``names``, each within
    ``max_bytes``; other parts are read past and dropped."""

    def __init__(self, names: Sequence[str], max_bytes: int) -> None:
        self.names = tuple(names)
        self.max_bytes = max_bytes
        self.found: dict[str, bytes] = {}
        self._headers: dict[str, str] = {}
        self._field = self._value = b""
        self._name: str | None = None
        self._data = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _begin(self) -> None:
        self._headers, self._name, self._data = {}, None, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name not in self.names:
            return
        if name in self.found:
            raise HTTPException(422, f"{name}: given more than once")
        declared = self._headers.get("content-type")
        if declared is not None:
            mime = parse_options_header(declared)[0].decode("latin-1")
            if not (mime.startswith("image/") or mime == "application/octet-stream"):
                raise HTTPException(
                    415,
                    f"{name}: expected an image (image/* or application/octet-stream), "
                    f"got {declared!r}",
                )
        self._name = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name is None:
            return
        if len(self._data) + (end - start) > self.max_bytes:
            raise HTTPException(413, f"{self._name}: upload over {_limit_text(self.max_bytes)}")
        self._data += data[start:end]

    def _part_end(self) -> None:
        if self._name is not None:
            self.found[self._name] = bytes(self._data)
        self._name, self._data = None, bytearray()


async def read_images(
    request: Request, max_bytes: int, names: Sequence[str] = IMAGE_FIELDS
) -> dict[str, bytes]:
    """The file fields ``names`` of a ``multipart/form-data`` request, each of at most
    ``max_bytes``, as bytes in memory. Errors (``HTTPException``): 415 not multipart (or a part
    that is not an image), 413 a body or a part over the limit (the part named), 400 a
    malformed body, 422 a field missing or given twice (named)."""
    boundary = multipart_boundary(request.headers.get("content-type"))
    body_limit = len(names) * max_bytes + FRAMING_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:  # refused before reading a byte
        raise HTTPException(
            413,
            f"request body of {int(declared) / MB:.1f} MB is over {len(names)} images of "
            f"{_limit_text(max_bytes)}",
        )
    parts = _Parts(names, max_bytes)
    parser = MultipartParser(boundary, parts.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:  # no or a false Content-Length: count what arrives
                raise HTTPException(
                    413, f"request body over {len(names)} images of {_limit_text(max_bytes)}"
                )
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as err:
        raise HTTPException(400, f"malformed multipart/form-data body: {err}") from None
    missing = [name for name in names if name not in parts.found]
    if missing:
        raise HTTPException(422, f"{missing[0]}: missing (a multipart/form-data file field)")
    return parts.found
