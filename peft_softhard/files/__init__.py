"""Files: resumable checkpoints and atomic writes (no pickle), export as a stock peft PROMPT_TUNING adapter, and
the KoboldAI soft-prompt zip."""

from .export import export_prompt_tuning, read_prompt_vectors
from .kobold import export_kobold, import_kobold, read_kobold

__all__ = ["export_kobold", "export_prompt_tuning", "import_kobold", "read_kobold", "read_prompt_vectors"]
