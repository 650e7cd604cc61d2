"""Ways to run a branched model faster, applied to a model from outside.

- ``fuse_branches``: the N branches' weights stacked and run as batched matmuls on one
  device, with the reference loop kept and the faster path chosen by measurement.
- ``BranchParallel`` (``branch.py``): branch groups on different ranks of a
  ``torch.distributed`` process group, partial sums all-reduced; composes with data
  parallelism on a 2-D device mesh (``distributed.py``).
"""

from paraformer.parallel.fused import FusedBranchStack, fuse_branches

__all__ = ["FusedBranchStack", "fuse_branches"]
