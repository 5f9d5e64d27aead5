"""Full fine-tuning (FT): every parameter is trained.

LP-FT is this method started from a linear probe's checkpoint: the trainer receives that
checkpoint from the pipeline (``rib finetune --init``), so the method itself is unchanged.
"""

from .base import Method


class FullFineTuning(Method):
    name = "ft"
