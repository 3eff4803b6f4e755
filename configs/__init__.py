"""Paper settings as plain Python: a dataset base (`datasets.py`) plus each method's changes.

    cfg = get_config("alss", "voc")            # Hung et al.'s VOC setting
    cfg = cfg.override(["lambda_semi=0.2"])    # what --set does
"""

import importlib

from configs import datasets
from tfsemiseg.config import Config
from tfsemiseg.methods import METHODS


def get_config(method, dataset):
    if dataset not in datasets.DATASETS:
        raise ValueError(f"Unknown --dataset={dataset!r}; choose one of {sorted(datasets.DATASETS)}.")
    if method not in METHODS:
        raise ValueError(f"Unknown --method={method!r}; choose one of {', '.join(sorted(METHODS))}.")
    module = importlib.import_module(f"configs.{method}")
    cfg = Config(method=method, dataset=dataset).replace(**datasets.DATASETS[dataset])
    return cfg.replace(**module.SETTINGS.get(dataset, {}))
