"""Training-data augmentation (`dataset.augmentation`): new rows from synonyms or back-translation.

    new_rows, stats = augment_rows(rows, spec, fmt="input-target")   # rows as read from JSONL
    stats = augment_file(train_path, spec, fmt, out_path)            # the same, file to file

The data preparation of `train.run` calls this on the training rows only: evaluation data is
never augmented, so no paraphrase of a training row can stand in for an eval row, and no eval
row is ever paraphrased into training. The modules: `rows` chooses rows, texts and budgets;
`synonyms` does dictionary replacement (Chinese and English); `translate` talks to an
OpenAI-compatible endpoint.
"""

from kubetune_trainer.augment.rows import (
    AUGMENTED_FROM_KEY,
    AUGMENTED_KEY,
    AugmentStats,
    augment_file,
    augment_rows,
    read_rows,
)
from kubetune_trainer.augment.synonyms import DictionaryError, SynonymTable, load_synonyms
from kubetune_trainer.augment.translate import BackTranslator, TranslationError

__all__ = [
    "AUGMENTED_FROM_KEY",
    "AUGMENTED_KEY",
    "AugmentStats",
    "BackTranslator",
    "DictionaryError",
    "SynonymTable",
    "TranslationError",
    "augment_file",
    "augment_rows",
    "load_synonyms",
    "read_rows",
]
