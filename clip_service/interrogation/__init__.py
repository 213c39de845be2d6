"""clip-interrogator 0.6.0's prompt algorithm over injected async CLIP/BLIP services."""

from clip_service.interrogation.interrogator import (
    ANALYZE_TABLES,
    Captioner,
    Interrogator,
    InterrogatorSettings,
    Mode,
    TextEncoder,
)
from clip_service.interrogation.label_cache import (
    EncodeTexts,
    LabelCache,
    LabelTables,
    TableEmbeddings,
)
from clip_service.interrogation.labels import LabelTable, label_hash, read_label_tables

__all__ = [
    "ANALYZE_TABLES",
    "Captioner",
    "EncodeTexts",
    "Interrogator",
    "InterrogatorSettings",
    "LabelCache",
    "LabelTable",
    "LabelTables",
    "Mode",
    "TableEmbeddings",
    "TextEncoder",
    "label_hash",
    "read_label_tables",
]
