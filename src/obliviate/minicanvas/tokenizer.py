"""Tokenizer files that load under transformers 4 and 5 alike (used by the MiniCanvas build
and by `export`, which writes a whole pipeline)."""
from __future__ import annotations

import json
from pathlib import Path

from ..delta import atomic_write_bytes


def make_portable(directory: str | Path) -> None:
    """transformers 5 records its fast tokenizer as `TokenizersBackend`, a name transformers 4
    does not know; `PreTrainedTokenizerFast` loads the same files in both. Rewrites the
    pipeline directory's model_index.json and tokenizer/tokenizer_config.json in place (same
    bytes as before apart from the class name; each file replaced atomically)."""
    directory = Path(directory)
    index_path = directory / "model_index.json"
    index = json.loads(index_path.read_text())
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    atomic_write_bytes(index_path, json.dumps(index, indent=2).encode())
    config_path = directory / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    atomic_write_bytes(config_path, json.dumps(config, indent=2).encode())
