"""Segmentation networks, backbones and heads. Importing this package registers the custom layers,
so `keras.saving.load_model("final/segmenter.keras")` works after `import tfsemiseg.models`."""

from tfsemiseg.models import heads, normalization  # noqa: F401  (registers ResizeTo, ImageNormalization, ...)
