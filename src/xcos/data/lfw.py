"""LFW protocol files: ``pairs*.txt`` as a ``PairSet`` and ``people*.txt`` as identity sets.

Formats (from the LFW README; fields are separated by tabs or spaces):

- View 2 ``pairs.txt``: a header ``<sets> <n>``, then for each set ``n`` matched lines
  ``Name i j`` followed by ``n`` mismatched lines ``Name1 i Name2 j``. Each set is one fold.
- View 1 ``pairsDevTrain.txt`` / ``pairsDevTest.txt``: a header ``<n>``, then ``n`` matched and
  ``n`` mismatched lines (a single set; see ``read_lfw`` for how folds are made).
- ``people.txt``: a header ``<sets>``, then per set a count line and ``Name images`` lines.
  ``peopleDevTrain.txt`` / ``peopleDevTest.txt``: a header ``<n>`` then ``n`` such lines.

Image ``i`` of ``Name`` is ``<images>/<Name>/<Name>_<iiii>.jpg`` (1-based, zero-padded to 4).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xcos.data.folds import contiguous_folds
from xcos.data.pair_sets import PairSet
from xcos.errors import DataError
from xcos.registry import PAIR_SETS

# View 1 has no folds; its halves are each cut into this many contiguous blocks.
VIEW1_FOLDS = 10
MISSING_SHOWN = 5


@dataclass
class _Line:
    number: int  # 1-based line number in the file, for error messages
    fields: list[str]


def lfw_image_path(images: Path, name: str, number: int) -> Path:
    """Path of image ``number`` (1-based) of identity ``name`` under the ``images`` folder."""
    return images / name / f"{name}_{number:04d}.jpg"


@PAIR_SETS.register("lfw")
def read_lfw(path: str, images: str | None = None, name: str | None = None) -> PairSet:
    """Read an LFW pairs file (View 2 ``pairs.txt`` or View 1 ``pairsDev*.txt``).

    Args:
        path: the pairs file.
        images: folder holding ``<Name>/<Name>_<NNNN>.jpg``; default ``<pairs folder>/images``
            when that exists, else the pairs file's own folder (the official release layout).
        name: pair-set name; default ``lfw`` for ``pairs.txt``, ``lfw_dev_test`` for
            ``pairsDevTest.txt`` and so on.

    Returns:
        A ``PairSet`` whose ``images`` are the distinct image paths (strings, first-use order),
        ``pairs`` int64 [N, 2], ``labels`` int64 [N] (1 matched, 0 mismatched), ``folds`` int64
        [N] and ``extra`` columns ``name_a`` / ``name_b`` (identity names).

        Folds: View 2 uses its 10 sets. View 1 has none, so each half (matched, mismatched) is
        cut into 10 contiguous blocks and block k of both halves forms fold k: every fold holds
        as many matched as mismatched pairs, which plain contiguous folds over the file would
        not (the matched pairs all come first). Halves shorter than 10 get one fold per pair.

    Raises:
        DataError: naming the file and line for a malformed header or pair line, a count that
            disagrees with the header, or a truncated file; or listing missing images.
    """
    pairs_path = Path(path)
    if not pairs_path.is_file():
        raise DataError(f"LFW pairs file {str(pairs_path)!r} does not exist")
    root = _images_folder(pairs_path, images)
    index: dict[str, int] = {}  # image path -> position in ``images`` (each image once)
    pairs, labels, folds, names_a, names_b = [], [], [], [], []
    for (name_a, number_a), (name_b, number_b), label, fold in _pair_lines(pairs_path):
        pairs.append(
            [
                index.setdefault(str(lfw_image_path(root, name_a, number_a)), len(index)),
                index.setdefault(str(lfw_image_path(root, name_b, number_b)), len(index)),
            ]
        )
        labels.append(label)
        folds.append(fold)
        names_a.append(name_a)
        names_b.append(name_b)
    image_paths = list(index)
    _check_images_exist(image_paths, pairs_path, root)
    return PairSet(
        name=name or _default_name(pairs_path),
        images=image_paths,
        pairs=np.asarray(pairs, dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int64),
        folds=np.asarray(folds, dtype=np.int64),
        extra={"name_a": names_a, "name_b": names_b},
    )


def read_lfw_people(path: str) -> list[list[tuple[str, int]]]:
    """Read ``people.txt`` (10 sets) or ``peopleDevTrain/DevTest.txt`` (one set).

    Returns one list per set of ``(name, number of images)``, in file order.

    The two layouts share a first line holding one integer; they differ in the second line:
    a lone count (``people.txt``: the first line counted sets) or ``Name n`` (a single set).
    """
    people_path = Path(path)
    if not people_path.is_file():
        raise DataError(f"LFW people file {str(people_path)!r} does not exist")
    lines = _read_lines(people_path)
    header = next(lines, None)
    if header is None:
        raise DataError(f"{people_path}: empty file; expected a count on line 1")
    count = _count(people_path, header, "a count of sets or people")
    first = next(lines, None)
    if first is None:
        if count:
            raise DataError(f"{people_path}:{header.number}: header promises {count}, file ends")
        return [[]]
    if count == 0:
        _refuse_line(first, path=people_path, expected=0, what="entries")
    if len(first.fields) == 1:  # people.txt: ``count`` sets, each with its own count line
        sets = [_people_set(people_path, lines, _count(people_path, first, "a set size"))]
        for _ in range(count - 1):
            size_line = _next_line(lines, people_path, count, len(sets), what="sets")
            sets.append(_people_set(people_path, lines, _count(people_path, size_line, "size")))
        found, what = len(sets), "sets"
    else:  # a single set of ``count`` people; ``first`` is its first entry
        sets = [[_parse_person(people_path, first), *_people_set(people_path, lines, count, 1)]]
        found, what = count, "people"
    _check_no_more_lines(lines, people_path, found, what)
    return sets


def _images_folder(pairs_path: Path, images: str | None) -> Path:
    if images is not None:
        root = Path(images)
        if not root.is_dir():
            raise DataError(f"LFW images folder {str(root)!r} does not exist")
        return root.resolve()
    nested = pairs_path.parent / "images"
    # absolute, like the CSV reader, so paths survive a change of working directory
    return (nested if nested.is_dir() else pairs_path.parent).resolve()


def _default_name(pairs_path: Path) -> str:
    # pairs -> lfw, pairsDevTest -> lfw_dev_test, anything else -> lfw_<stem>
    rest = pairs_path.stem.removeprefix("pairs")
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", rest).lower().strip("_")
    return f"lfw_{snake}" if snake else "lfw"


def _read_lines(path: Path) -> Iterator[_Line]:
    """Non-blank lines with their 1-based numbers (blank lines carry no protocol data)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file ({err})") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if fields:
            yield _Line(number, fields)


_PairLine = tuple[tuple[str, int], tuple[str, int], int, int]


def _pair_lines(path: Path) -> Iterator[_PairLine]:
    """((name_a, number_a), (name_b, number_b), label, fold) for every pair line of ``path``,
    after checking the line counts against the header."""
    lines = _read_lines(path)
    sets, per_set, view1 = _pairs_header(path, next(lines, None))
    expected, found = 2 * sets * per_set, 0
    for set_number in range(sets):
        for label in (1, 0):
            half_folds = _half_folds(set_number, per_set, view1)
            for position in range(per_set):
                line = _next_line(lines, path, expected, found)
                ref_a, ref_b = _parse_pair(path, line, label)
                yield ref_a, ref_b, label, int(half_folds[position])
                found += 1
    _check_no_more_lines(lines, path, expected)


def _pairs_header(path: Path, header: _Line | None) -> tuple[int, int, bool]:
    """(sets, pairs of each label per set, is View 1) from ``<sets> <n>`` (View 2) or ``<n>``."""
    if header is None:
        raise DataError(f"{path}: empty file; expected a header such as '10 300' on line 1")
    values = [_to_int(f) for f in header.fields]
    counts = [v for v in values if v is not None and v > 0]
    if len(counts) == len(values) == 1:
        return 1, counts[0], True
    if len(counts) == len(values) == 2:
        return counts[0], counts[1], False
    raise DataError(
        f"{path}:{header.number}: bad header {' '.join(header.fields)!r}; expected "
        "'<sets> <pairs per set>' (View 2, e.g. '10 300') or '<matched pairs>' (View 1)"
    )


def _half_folds(set_number: int, per_set: int, view1: bool) -> np.ndarray:
    """Fold of each pair of one half (matched or mismatched) of one set."""
    if not view1:
        return np.full(per_set, set_number, dtype=np.int64)
    return contiguous_folds(per_set, min(VIEW1_FOLDS, per_set))


def _next_line(
    lines: Iterator[_Line], path: Path, expected: int, found: int, what: str = "pairs"
) -> _Line:
    line = next(lines, None)
    if line is None:
        raise DataError(
            f"{path}: truncated: the header promises {expected} {what}, the file ends after {found}"
        )
    return line


def _check_no_more_lines(
    lines: Iterator[_Line], path: Path, expected: int, what: str = "pairs"
) -> None:
    _refuse_line(next(lines, None), path, expected, what)


def _refuse_line(extra: _Line | None, path: Path, expected: int, what: str) -> None:
    if extra is not None:
        raise DataError(
            f"{path}:{extra.number}: unexpected line {' '.join(extra.fields)!r} after the "
            f"{expected} {what} the header promises"
        )


def _parse_pair(path: Path, line: _Line, label: int) -> tuple[tuple[str, int], tuple[str, int]]:
    """((name_a, number_a), (name_b, number_b)) of a matched (3 fields) or mismatched line."""
    fields = line.fields
    if label == 1 and len(fields) == 3:
        spec = [(fields[0], fields[1]), (fields[0], fields[2])]
    elif label == 0 and len(fields) == 4:
        spec = [(fields[0], fields[1]), (fields[2], fields[3])]
    else:
        kind = "'Name i j' (matched" if label else "'Name1 i Name2 j' (mismatched"
        raise DataError(
            f"{path}:{line.number}: expected {kind} pair), got {len(fields)} field(s): "
            f"{' '.join(fields)!r}"
        )
    return tuple(_image_ref(path, line, n, text) for n, text in spec)  # type: ignore[return-value]


def _image_ref(path: Path, line: _Line, name: str, text: str) -> tuple[str, int]:
    number = _to_int(text)
    if number is None or number < 1:
        raise DataError(
            f"{path}:{line.number}: image number must be a positive integer, got {text!r}"
        )
    return name, number


def _people_set(
    path: Path, lines: Iterator[_Line], size: int, start: int = 0
) -> list[tuple[str, int]]:
    """Entries ``start`` to ``size - 1`` of a set of ``size`` people."""
    return [
        _parse_person(path, _next_line(lines, path, size, i, what="people in this set"))
        for i in range(start, size)
    ]


def _parse_person(path: Path, line: _Line) -> tuple[str, int]:
    if len(line.fields) != 2:
        raise DataError(
            f"{path}:{line.number}: expected 'Name number_of_images', got {' '.join(line.fields)!r}"
        )
    count = _to_int(line.fields[1])
    if count is None or count < 1:
        raise DataError(
            f"{path}:{line.number}: number of images must be a positive integer, "
            f"got {line.fields[1]!r}"
        )
    return line.fields[0], count


def _count(path: Path, line: _Line, what: str) -> int:
    value = _to_int(line.fields[0]) if len(line.fields) == 1 else None
    if value is None or value < 0:
        raise DataError(f"{path}:{line.number}: expected {what}, got {' '.join(line.fields)!r}")
    return value


def _to_int(text: str) -> int | None:
    # isdecimal rejects signs, so '-1' and '+1' are malformed rather than parsed
    return int(text) if text.isascii() and text.isdecimal() else None


def _check_images_exist(image_paths: list[str], source: Path, root: Path) -> None:
    missing = [p for p in image_paths if not Path(p).is_file()]
    if missing:
        shown = ", ".join(missing[:MISSING_SHOWN])
        more = f" (and {len(missing) - MISSING_SHOWN} more)" if len(missing) > MISSING_SHOWN else ""
        raise DataError(
            f"{source}: {len(missing)} of {len(image_paths)} image(s) not found under "
            f"{str(root)!r}: {shown}{more}. Pass images=<folder with Name/Name_NNNN.jpg>"
        )
