"""One file per method; `METHODS` maps the `--method` flag to its keras.Model class."""

from tfsemiseg.methods.base import SegmentationMethod
from tfsemiseg.methods.alss import AdvSemiSeg
from tfsemiseg.methods.pseudoseg import PseudoSeg
from tfsemiseg.methods.st import SelfTraining, SelfTrainingPlus
from tfsemiseg.methods.suponly import SupOnly

# A keras.Model subclass (one fit), or a driver of several fits with a `run` classmethod (ST, ST++).
METHODS = {"suponly": SupOnly, "alss": AdvSemiSeg, "st": SelfTraining, "stpp": SelfTrainingPlus,
           "pseudoseg": PseudoSeg}


def get_method(name):
    if name not in METHODS:
        raise ValueError(f"Unknown --method={name!r}; choose one of {sorted(METHODS)}.")
    return METHODS[name]
