"""Classifier: texts in, category probabilities out; the worker knows nothing else of it.

`Encoder` runs multilingual-e5-small; `ZeroShotScorer` turns embeddings into category
scores from the descriptions and examples a policy carries. `build` converts the weights.
"""

from service.classifier.encoder import Encoder, ModelNotBuilt
from service.classifier.zeroshot import Classifier, ZeroShotScorer

__all__ = ["Classifier", "Encoder", "ModelNotBuilt", "ZeroShotScorer"]
# (heads, scorer, train, datasets are imported from their modules: they pull in torch/yaml)
