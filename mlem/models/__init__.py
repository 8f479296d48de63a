"""Flax UNets predicting ε and the ladder of levels ``f¹…fᴷ`` (docs/design.md §1, §4)."""

from mlem.models.registry import LEVELS, get_model, level_names
from mlem.models.unet import UNet

__all__ = ["LEVELS", "UNet", "get_model", "level_names"]
