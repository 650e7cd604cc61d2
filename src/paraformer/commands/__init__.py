"""The command-line verbs: one module per verb (or family of verbs), each a thin layer over the
documented function it calls. ``VERBS`` is what ``paraformer.cli`` assembles, in help order."""

from paraformer.commands import compress, continual, evaluate, expand, export, info, lm, lm_bench, train

VERBS = (
    train.register,
    evaluate.register,
    compress.register,
    export.register,
    expand.register,
    continual.register,
    info.register,
    lm.register,
    lm_bench.register,
)

__all__ = ["VERBS"]
