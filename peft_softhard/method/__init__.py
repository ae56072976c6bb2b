"""The SOFTHARD method itself: what a prompt is (config), the module that makes its vectors (encoder), how a
vector becomes its nearest token (projection) and which tokens it may become (vocabulary)."""

from .config import SoftHardConfig, is_softhard
from .encoder import SoftHardPromptEncoder
from .projection import nearest_tokens

__all__ = ["SoftHardConfig", "SoftHardPromptEncoder", "is_softhard", "nearest_tokens"]
