"""One file per method. Each registers itself (`@register("name")`); importing this package imports
every module in it, so `METHODS` (`--method` name -> class, in registration order: SupOnly first) is
complete without a list to keep."""

import importlib
import pkgutil

from tfsemiseg.methods.base import METHODS, SegmentationMethod, describe, register  # noqa: F401

importlib.import_module(f"{__name__}.suponly")  # first: the baseline every table starts with
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
globals().update({cls.__name__: cls for cls in METHODS.values()})  # tfsemiseg.methods.SupOnly, ...


def get_method(name):
    if name not in METHODS:
        raise ValueError(f"Unknown --method={name!r}; choose one of {', '.join(METHODS)}.")
    return METHODS[name]
