"""``Value.uses``: the ``(node, input_index)`` pairs that read a value, as an insertion-ordered
multiset.

A list made ``Node.set_input`` linear in the value's use count, and after CSE one constant (a
shape scalar, an attention mask, rotary tables) can feed thousands of nodes of a deep model, so
rewiring them was quadratic. Appending and removing a use are O(1) here; iteration is in
insertion order. A pair may appear more than once only through direct surgery (the verifier
reports it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from .graph import Node

Use = tuple["Node", int]


class UseList:
    """Uses of one value; list-like for reading (iteration, ``len``, ``uses[0]``)."""

    __slots__ = ("_count", "_len")

    def __init__(self) -> None:
        self._count: dict[Use, int] = {}
        self._len = 0

    def append(self, use: Use) -> None:
        self._count[use] = self._count.get(use, 0) + 1
        self._len += 1

    def remove(self, use: Use) -> None:
        k = self._count.get(use)
        if k is None:
            raise ValueError(f"{use!r} is not a use of this value")
        if k == 1:
            del self._count[use]
        else:
            self._count[use] = k - 1
        self._len -= 1

    def clear(self) -> None:
        self._count.clear()
        self._len = 0

    def __iter__(self) -> Iterator[Use]:
        for use, k in list(self._count.items()):
            for _ in range(k):
                yield use

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __contains__(self, use: object) -> bool:
        return use in self._count

    def __getitem__(self, i: int) -> Use:
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError("use index out of range")
        for k, use in enumerate(self):
            if k == i:
                return use
        raise IndexError("use index out of range")  # pragma: no cover

    def __repr__(self) -> str:
        return f"UseList({list(self)!r})"
