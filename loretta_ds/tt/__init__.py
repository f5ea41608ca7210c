"""Pure tensor-train maths (imports torch only): mode shapes, cores, contraction."""
from .contract import split_cores, tt_to_dense
from .cores import TTFactorMatrix
from .shapes import core_shapes, factorize, modes_for, reference_modes, tt_numel, tt_ranks, useful_rank

__all__ = ["TTFactorMatrix", "tt_to_dense", "split_cores", "factorize", "modes_for",
           "reference_modes", "core_shapes", "tt_numel", "tt_ranks"]
