"""tfsemiseg: semi-supervised semantic segmentation in Keras 3 / TensorFlow."""

__version__ = "0.1.0"
