"""Shipped cell layouts of the ``mbconv`` space: per block, the (depth, width) of each cell."""

from __future__ import annotations

#: The paper's multi-cell space (DNA, CVPR 2020): per block the depths (2,2,3), (2,3,4),
#: (2,3,4), (3,4,4), (4,5,5), (1); 6 ops per layer give 288, 1548, 1548, 2808, 16848 and 6
#: candidates per block. Cells are EfficientNet-B0 wide, except where two cells of a block share
#: a depth: they then differ in width ("automatic computation allocation"). Blocks 3 and 4 take
#: the widths the official searched networks show (official ``retraining/model.py``: DNA-a/-b
#: use 96 channels in block 3 and DNA-a 160 in block 4, where DNA-c/-d use 112 and 192). The
#: official networks all keep 24 channels in block 0, so its second depth-2 cell is the one
#: choice of ours: 32, the next width timm's channel rounding allows (a narrower 16 would equal
#: the fixed stage's width and halve the capacity of the block that runs at the largest size).
PAPER: tuple[tuple[tuple[int, int | None], ...], ...] = (
    ((2, 24), (2, 32), (3, 24)),
    ((2, 40), (3, 40), (4, 40)),
    ((2, 80), (3, 80), (4, 80)),
    ((3, 112), (4, 96), (4, 112)),
    ((4, 192), (5, 160), (5, 192)),
    ((1, 320),),
)

PRESETS = {"paper": PAPER}
