"""Data for altgrad_jax: EURLEX57K (JSONL / Hugging Face hub) or a synthetic corpus.

The training loop calls `build_data(config.data, workdir)` and iterates `BatchIterator` /
`eval_batches`. Token id 0 is padding, so the attention mask is ``input_ids != PAD_ID``. See
`altgrad_jax.data.pipeline` for the config fields.
"""

from altgrad_jax.data.batching import ArrayDataset, BatchIterator, eval_batches, num_eval_batches
from altgrad_jax.data.errors import DataError
from altgrad_jax.data.hub import DEFAULT_HUB_NAME, download_from_hub
from altgrad_jax.data.jsonl import read_jsonl, write_jsonl
from altgrad_jax.data.labels import LABEL_SETS, LabelVocab, build_label_vocab
from altgrad_jax.data.paths import (DATA_DIR_ENV, find_split_file, require_data_dir,
                                    resolve_data_dir)
from altgrad_jax.data.pipeline import DataBundle, DataConfig, SyntheticDataWarning, build_data
from altgrad_jax.data.subsets import carve_indices, subset_indices
from altgrad_jax.data.synthetic import make_synthetic_corpus
from altgrad_jax.data.tokenizer import (PAD_ID, Encoded, encode_texts, get_or_train_tokenizer,
                                        load_tokenizer, save_tokenizer, train_tokenizer)

__all__ = [
    "ArrayDataset",
    "BatchIterator",
    "DATA_DIR_ENV",
    "DEFAULT_HUB_NAME",
    "DataBundle",
    "DataConfig",
    "DataError",
    "Encoded",
    "LABEL_SETS",
    "LabelVocab",
    "PAD_ID",
    "SyntheticDataWarning",
    "build_data",
    "build_label_vocab",
    "carve_indices",
    "download_from_hub",
    "encode_texts",
    "eval_batches",
    "find_split_file",
    "get_or_train_tokenizer",
    "load_tokenizer",
    "make_synthetic_corpus",
    "num_eval_batches",
    "read_jsonl",
    "require_data_dir",
    "resolve_data_dir",
    "save_tokenizer",
    "subset_indices",
    "train_tokenizer",
    "write_jsonl",
]
