"""Paper settings as plain Python: a dataset base (`datasets.py`) plus each method's changes.

    cfg = get_config("alss", "voc")            # Hung et al.'s VOC setting
    cfg = cfg.override(["lambda_semi=0.2"])    # what --set does
"""

import importlib

from configs import datasets
from tfsemiseg.config import Config
from tfsemiseg.methods import METHODS


def get_config(method, dataset, backbone=None):
    """The paper / CPU setting of `method` on `dataset`; a `<dataset>:<backbone>` variant when one exists
    for `backbone` (e.g. camvid:tiny, the from-scratch CamVid setting)."""
    if dataset not in datasets.DATASETS or ":" in dataset:
        names = sorted(d for d in datasets.DATASETS if ":" not in d)
        raise ValueError(f"Unknown --dataset={dataset!r}; choose one of {names}.")
    if method not in METHODS:
        raise ValueError(f"Unknown --method={method!r}; choose one of {', '.join(METHODS)}.")
    try:
        settings = importlib.import_module(f"configs.{method}").SETTINGS
    except ModuleNotFoundError as err:
        if err.name != f"configs.{method}":
            raise
        settings = {}  # a method without paper settings of its own runs the dataset's
    key = f"{dataset}:{backbone}" if f"{dataset}:{backbone}" in datasets.DATASETS else dataset
    cfg = Config(method=method, dataset=dataset, params=dict(METHODS[method].hyperparameters))
    cfg = cfg.replace(**datasets.DATASETS[key])
    return cfg.replace(**settings.get(key, settings.get(dataset, {})))
