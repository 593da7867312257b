"""Classifier: texts in, category probabilities out; the worker knows nothing else of it.

`Encoder` runs multilingual-e5-small (an `Embedder`, as the disk `EmbeddingCache` is);
`ZeroShotScorer` turns embeddings into category scores from the descriptions and examples a
policy carries. `build` converts the weights.
"""

from service.classifier.embedder import Embedder
from service.classifier.encoder import Encoder, ModelNotBuilt
from service.classifier.zeroshot import ZeroShotScorer

__all__ = ["Embedder", "Encoder", "ModelNotBuilt", "ZeroShotScorer"]
# (heads, scorer, train, datasets are imported from their modules: they pull in torch/yaml)
