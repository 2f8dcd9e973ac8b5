"""A search space: per block a cell of each depth, every layer choosing its kernel size."""

import hashlib
import itertools
import json

import attrs
from attrs import field, frozen

import dnax
from dnax.plugins.toolkit.builder import build_layer
from dnax.plugins.toolkit.supernet import BlockSupernet, Cell, adapter


@frozen
class KernelSpaceConfig:
    depths: tuple[int, ...] = field(default=(1, 2), validator=dnax.positive,
                                    metadata={"help": "layers of each cell"})
    kernels: tuple[int, ...] = field(default=(3, 5), validator=dnax.positive,
                                     metadata={"help": "depthwise kernels a layer chooses from"})


class KernelSpace(dnax.SearchSpace):
    """Inverted residuals (expansion 2) of the teacher's width, choosing their kernel."""

    Config = KernelSpaceConfig

    def arch(self, block, layer, kernel):
        return f"ir_r1_k{kernel}_s{block.stride if layer == 0 else 1}_e2_c{block.out_chs}"

    def cells(self, block):
        ops = tuple(f"k{k}" for k in self.config.kernels)
        return tuple(dnax.CellSpec(i, d, block.out_chs, ops)
                     for i, d in enumerate(self.config.depths))

    def candidates(self, block):
        paths = [(cell.index, ops) for cell in self.cells(block)
                 for ops in itertools.product(range(len(cell.ops)), repeat=cell.depth)]
        return [dnax.Candidate(block.index, i, c, ops, tuple(
                    self.arch(block, j, self.config.kernels[o]) for j, o in enumerate(ops)))
                for i, (c, ops) in enumerate(paths)]

    def build_supernet(self, block):
        def layer(j, kernel):
            in_chs = block.in_chs if j == 0 else block.out_chs
            return build_layer(self.arch(block, j, kernel), in_chs, self.model_kwargs())[0]

        return BlockSupernet([
            Cell(adapter(block.in_chs, block.in_chs),  # identity: cells keep the teacher's widths
                 [[layer(j, k) for k in self.config.kernels] for j in range(cell.depth)],
                 adapter(block.out_chs, block.out_chs))
            for cell in self.cells(block)])

    def arch_def(self, blocks, chosen):
        return [[f"ds_r1_k3_s1_c{blocks[0].in_chs}"], *[list(c.arch) for c in chosen]]

    def model_kwargs(self):
        return {"stem_size": 8, "num_features": 64}

    def fingerprint(self):
        body = json.dumps(attrs.asdict(self.config), sort_keys=True)
        return hashlib.sha256(f"kernels:{body}".encode()).hexdigest()


@dnax.hookimpl
def dnax_register_spaces(register):
    register("kernels", KernelSpace)
