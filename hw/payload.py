"""Packing of stream payloads to and from the flat bit vectors of the generated Verilog ports.

Amaranth flattens a ``data.StructLayout`` payload into one port; this codec maps field arrays
(one entry per beat) to those integers and back, vectorised with NumPy so a testbench can
prepare a whole stream before the simulation runs. It is the units' port encoding, so it lives
with the units: the compiler (sw/compiler.py) and the testbenches (sim/tb/) both use it.
"""

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import data

__all__ = ["PayloadCodec"]


@dataclass(frozen=True)
class _Leaf:
    offset: int
    width: int
    signed: bool
    count: int  # 0 for a scalar field, else the number of array elements (stride = width)


class PayloadCodec:
    """Encoder/decoder for a StructLayout whose fields are shapes or ArrayLayouts of shapes."""

    def __init__(self, layout: data.StructLayout):
        self.width = layout.size
        self._nbytes = (self.width + 7) // 8
        self._leaves = {}
        for name, field in layout:
            shape = field.shape
            if isinstance(shape, data.ArrayLayout):
                elem = Shape.cast(shape.elem_shape)
                self._leaves[name] = _Leaf(field.offset, elem.width, elem.signed, shape.length)
            else:
                elem = Shape.cast(shape)
                self._leaves[name] = _Leaf(field.offset, elem.width, elem.signed, 0)

    def _columns(self, leaf: _Leaf):
        """(bit offset, element index or None) of each element of the leaf."""
        if leaf.count == 0:
            return [(leaf.offset, None)]
        return [(leaf.offset + i * leaf.width, i) for i in range(leaf.count)]

    def encode(self, fields: dict[str, np.ndarray]) -> list[int]:
        """Field arrays (scalar: shape (n,), array: shape (n, count)) to n payload integers."""
        missing = self._leaves.keys() - fields.keys()
        if missing:
            raise KeyError(f"payload fields missing: {sorted(missing)}")
        n = len(next(iter(fields.values())))
        bits = np.zeros((n, self._nbytes * 8), dtype=np.uint8)
        for name, leaf in self._leaves.items():
            values = np.asarray(fields[name], dtype=np.int64)
            shifts = np.arange(leaf.width, dtype=np.int64)
            for offset, index in self._columns(leaf):
                column = values if index is None else values[:, index]
                bits[:, offset:offset + leaf.width] = (column[:, None] >> shifts) & 1
        packed = np.packbits(bits, axis=1, bitorder="little")
        return [int.from_bytes(row.tobytes(), "little") for row in packed]

    def decode(self, words: list[int]) -> dict[str, np.ndarray]:
        """n payload integers to field arrays (the inverse of ``encode``, with sign extension)."""
        raw = b"".join(w.to_bytes(self._nbytes, "little") for w in words)
        packed = np.frombuffer(raw, dtype=np.uint8).reshape(len(words), self._nbytes)
        bits = np.unpackbits(packed, axis=1, bitorder="little").astype(np.int64)
        out = {}
        for name, leaf in self._leaves.items():
            weights = np.int64(1) << np.arange(leaf.width, dtype=np.int64)
            columns = []
            for offset, _ in self._columns(leaf):
                value = bits[:, offset:offset + leaf.width] @ weights
                if leaf.signed:
                    value = np.where(value >= 1 << (leaf.width - 1), value - (1 << leaf.width), value)
                columns.append(value)
            out[name] = columns[0] if leaf.count == 0 else np.stack(columns, axis=1)
        return out
