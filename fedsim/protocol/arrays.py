"""Reading a Flower `Array` as numpy, quickly: the asynchronous loop reads every reply's arrays several times.

Flower's `Array.numpy()` goes through `numpy.load`, which parses the `.npy` header with Python's literal evaluator:
about half a millisecond an array, whatever its size. `as_numpy` reads the header numpy itself writes for a plain
array (`{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`) with one pattern and copies the values out of
the buffer; anything else (another header, a Fortran-ordered or structured array, a buffer whose length does not
match its header, which a client could send) goes through `Array.numpy()`, so the result and the errors are the same.
"""

from __future__ import annotations

import re

import numpy as np
from flwr.app import Array

_MAGIC = b"\x93NUMPY\x01\x00"  # format 1.0: a 2-byte little-endian header length follows
_HEADER = re.compile(rb"\{'descr': '([<>|][a-zA-Z]\d{1,2})', 'fortran_order': False, 'shape': \(([\d, ]*)\), \} *\n")


def as_numpy(array: Array, copy: bool = True) -> np.ndarray:
    """The array's values, as `array.numpy()` gives them (a writable copy; `copy=False`: a read-only view of the
    buffer where the fast path applies, which saves a copy of a model that is only read)."""
    data = array.data
    if array.stype == "numpy.ndarray" and data[:8] == _MAGIC and len(data) >= 10:
        end = 10 + int.from_bytes(data[8:10], "little")
        found = _HEADER.fullmatch(data[10:end])
        if found is not None:
            dtype = np.dtype(found.group(1).decode("ascii"))
            shape = tuple(int(n) for n in found.group(2).decode("ascii").replace(" ", "").split(",") if n)
            count = int(np.prod(shape, dtype=np.int64))
            if not dtype.hasobject and len(data) == end + count * dtype.itemsize:
                values = np.frombuffer(data, dtype=dtype, count=count, offset=end).reshape(shape)
                return values.copy() if copy else values
    return array.numpy()
