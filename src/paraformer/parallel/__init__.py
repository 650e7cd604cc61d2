"""Ways to run a branched model faster, applied to a model from outside.

- ``fuse_branches``: the N branches' weights stacked and run as batched matmuls on one
  device, with the reference loop kept and the faster path chosen by measurement.
- ``merge_for_inference`` / ``prepare_for_inference``: eval-only modules with norms folded and
  branches merged into few, larger ops, and the fastest inference path picked by measurement.
- ``BranchParallel`` (``branch.py``): branch groups on different ranks of a
  ``torch.distributed`` process group, partial sums all-reduced; composes with data
  parallelism on a 2-D device mesh (``distributed.py``).
"""

from paraformer.parallel.fused import FusedBranchStack, fuse_branches
from paraformer.parallel.inference import prepare_for_inference
from paraformer.parallel.merged import merge_for_inference

__all__ = ["FusedBranchStack", "fuse_branches", "merge_for_inference", "prepare_for_inference"]
