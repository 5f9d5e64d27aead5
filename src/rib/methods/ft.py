"""Full fine-tuning (FT): every parameter is trained."""

from .base import Method


class FullFineTuning(Method):
    name = "ft"
