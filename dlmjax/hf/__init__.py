"""The study's released checkpoint format (HuggingFace, model_type "gidd"): import and export.

format           config.json ↔ our config keys (what is honoured, defaulted, refused)
generation       generation_config.json ↔ sample.* settings
state_dict       our stacked parameter tree ↔ the per-layer PyTorch state dict
safetensors_io   model.safetensors, sharded with an index beyond a size limit
tokenizer_files  tokenizer.json in and out (special tokens at ids 0-3)
importer         a released directory → a run directory with an orbax checkpoint
exporter         a run directory → a released-format directory
"""

from dlmjax.hf.exporter import export_checkpoint
from dlmjax.hf.format import FormatError
from dlmjax.hf.importer import import_checkpoint

__all__ = ["FormatError", "export_checkpoint", "import_checkpoint"]
