"""Models: the quantizable transformer encoder classifier."""

from altgrad_jax.models.encoder import (POOLING_MODES, EncoderClassifier, QDense, QEmbed,
                                        QuantPolicy)

__all__ = ["EncoderClassifier", "QDense", "QEmbed", "QuantPolicy", "POOLING_MODES"]
