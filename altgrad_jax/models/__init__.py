"""Models: the quantizable transformer encoder classifier."""

from altgrad_jax.models.dropout import Dropout, keep_mask
from altgrad_jax.models.encoder import (DROPOUT_IMPLS, POOLING_MODES, EncoderClassifier, QDense,
                                        QEmbed, QuantPolicy)

__all__ = ["EncoderClassifier", "QDense", "QEmbed", "QuantPolicy", "POOLING_MODES", "DROPOUT_IMPLS",
           "Dropout", "keep_mask"]
