"""Shipped cell layouts of the ``mbconv`` space: per block, the (depth, width) of each cell."""

from __future__ import annotations

#: The paper's multi-cell space (DNA, CVPR 2020): cell depths per block with EfficientNet-B0's
#: widths. 6 ops per layer give 288, 1548, 1548, 2808, 16848 and 6 candidates per block.
PAPER: tuple[tuple[tuple[int, int | None], ...], ...] = (
    ((2, 24), (2, 24), (3, 24)),
    ((2, 40), (3, 40), (4, 40)),
    ((2, 80), (3, 80), (4, 80)),
    ((3, 112), (4, 112), (4, 112)),
    ((4, 192), (5, 192), (5, 192)),
    ((1, 320),),
)

PRESETS = {"paper": PAPER}
