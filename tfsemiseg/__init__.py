"""tfsemiseg: semi-supervised semantic segmentation in Keras 3 / TensorFlow.

Importing the package before TensorFlow turns on TensorFlow's oneDNN CPU kernels
(`TF_ENABLE_ONEDNN_OPTS=1`, unless the environment says otherwise). TensorFlow enables them by
itself only on x86 CPUs with AVX-512 VNNI / BF16 or AMX; on the others (AVX2 CPUs such as this
project's AMD EPYC machines) it falls back to Eigen kernels, whose convolution gradients make the
CamVid step 2.3x slower (6.70 s against 2.86 s, benchmarks/RESULTS.md, "CPUs without AVX-512"),
and dilated convolutions leave the one-op path (`tfsemiseg.models.convolution`).
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
