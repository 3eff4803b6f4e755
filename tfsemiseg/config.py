"""The run configuration: one flat dataclass, filled from `configs/` and overridden from the CLI.

Paper settings live in `configs/<method>.py` as plain Python; every field can be overridden
with `--set name=value` (typed by the field's default) or a dedicated flag.

A method's own hyperparameters are declared with `owned_by(...)`: they are settable and saved
(config.json) only for that method, so a run's config lists the shared settings and its own
method's, and `--set lambda_u=2 --method=alss` is an error instead of a silently ignored value.
(Why one flat class rather than a dataclass per method: BUILD.md, "Configuration".)
"""

import dataclasses
import json
import math


def owned_by(default, *methods):
    """A field that belongs to `methods` (e.g. "alss"; ST and ST++ share theirs)."""
    return dataclasses.field(default=default, metadata={"methods": methods})


@dataclasses.dataclass
class Config:
    # run
    # The layout of what a run saves: 2 since segmenters are a backbone plus a head (a config.json
    # without it is layout 1, whose weights a run of layout 2 cannot resume from).
    layout: int = 2
    method: str = "suponly"
    dataset: str = "synthetic"
    split: str = ""
    data_dir: str = ""
    workdir: str = ""
    seed: int = 0
    # data
    crop_size: int = 64
    scale_range: tuple = (0.5, 2.0)
    base_size: int = 0  # 0: scale the image's own size; else resize its long side to base_size * s
    image_scale: float = 1.0  # resize whole images once (e.g. 0.5 for CPU-sized runs)
    batch_size: int = 8
    eval_batch_size: int = 1
    eval_split: str = "val"
    eval_window: int = 0  # sliding-window evaluation window (0: whole image)
    class_names: tuple = ()  # folder datasets
    ignore_value: int = 255  # the void value on disk (converted to 255 internally)
    image_size: int = 64  # synthetic images
    # model
    arch: str = "deeplabv2"
    backbone: str = "tiny"
    output_stride: int = 8
    backbone_weights: str = ""  # "", "imagenet" or a path to keras.applications weights
    freeze_bn: bool = False
    aspp_rates: tuple = ()
    head_channels: int = 256  # DeepLab-v3+ ASPP / decoder width (PSPNet: twice it)
    # optimisation
    iterations: int = 1000
    steps_per_epoch: int = 100  # logging / checkpoint / evaluation cadence
    eval_every: int = 0  # epochs between evaluations during training (0: only at the end)
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # False: Keras' decoupled decay (w -= lr * wd * w); True: the papers' code's, wd * w added to the
    # gradient (so it passes through momentum and the head's LR multiplier). tfsemiseg/optim.py.
    weight_decay_in_gradient: bool = False
    head_lr_mult: float = 10.0
    # hardware
    mixed_precision: bool = False
    jit_compile: bool = False
    distribute: str = "none"  # none | mirrored | multiworker
    # Under --distribute, batch norm statistics over the global batch (SyncBN, as ST++ / UniMatch
    # train); False: per replica, as DeepLab's and PseudoSeg's TF code. No effect on one device.
    sync_bn: bool = True
    deterministic: bool = False  # op determinism + a resumable fixed data stream: same result every run (CPU)
    # ALSS (Hung et al. 2018)
    lambda_adv: float = owned_by(0.01, "alss")
    lambda_semi_adv: float = owned_by(0.001, "alss")
    lambda_semi: float = owned_by(0.1, "alss")
    T_semi: float = owned_by(0.2, "alss")
    semi_start: int = owned_by(5000, "alss")
    semi_start_adv: int = owned_by(0, "alss")
    d_lr: float = owned_by(1e-4, "alss")
    d_beta_1: float = owned_by(0.9, "alss")
    d_beta_2: float = owned_by(0.99, "alss")
    # ST / ST++ (Yang et al. 2022)
    # stage_epochs > 0: every training stage runs this many epochs over its own image list (paper: 80);
    # else the teacher trains `iterations` and each student student_iterations (0: the paper's ratio,
    # as many epochs over its labeled + pseudo-labeled list as the teacher over its labeled list).
    stage_epochs: int = owned_by(0, "st", "stpp")
    student_iterations: int = owned_by(0, "st", "stpp")
    # A finished SupOnly run of the same setting and seed to use as the teacher (stage 1 not trained).
    teacher: str = owned_by("", "st", "stpp")
    tta_scales: tuple = owned_by((0.5, 0.75, 1.0, 1.5, 2.0), "st", "stpp")  # pseudo-labelling TTA
    tta_flip: bool = owned_by(True, "st", "stpp")
    reliable_fraction: float = owned_by(0.5, "st", "stpp")  # ST++: share of unlabeled images deemed reliable
    # PseudoSeg (Zou et al. 2021)
    lambda_u: float = owned_by(1.0, "pseudoseg")  # weight of the consistency loss on the strong view
    fusion_gamma: float = owned_by(0.5, "pseudoseg")  # the SGC's share of the fused pseudo-label
    pseudo_temperature: float = owned_by(0.5, "pseudoseg")  # sharpening temperature T
    attention_dim: int = owned_by(128, "pseudoseg")  # SGC query / key width
    # "": predicted classes; "masks": from the unlabeled crops' masks; a file path: "<image id> <class> ..." lines
    image_labels: str = owned_by("", "pseudoseg")
    # UniMatch / FixMatch (Yang et al. 2023)
    tau: float = owned_by(0.95, "unimatch", "fixmatch")  # confidence threshold of the pseudo-labels
    ohem: bool = owned_by(False, "unimatch", "fixmatch")  # OHEM cross-entropy on labeled images (Cityscapes)

    def validate(self):
        """Raise ValueError naming the flag of the first setting that cannot work (before anything runs)."""
        def need(ok, flag, what):
            if not ok:
                raise ValueError(f"{flag}={getattr(self, flag.lstrip('-').split()[-1])!r}: {what}")

        for name in ("iterations", "batch_size"):
            need(_whole(self, name) and getattr(self, name) >= 1, f"--{name}", "must be a positive whole number")
        for name in ("steps_per_epoch", "eval_batch_size", "crop_size"):
            need(_whole(self, name) and getattr(self, name) >= 1, f"--set {name}", "must be a positive whole number")
        for flag, name in (("--iterations", "iterations"), ("--set student_iterations", "student_iterations")):
            count, epoch = getattr(self, name), self.steps_per_epoch
            if count > epoch and count % epoch:
                low, high, divisor = count // epoch * epoch, -(-count // epoch) * epoch, math.gcd(count, epoch)
                need(False, flag, f"not a whole number of epochs of steps_per_epoch={epoch} (the logging, checkpoint "
                     f"and resume cadence), so Keras would train {high} steps. Use {low} or {high}, or "
                     f"--set steps_per_epoch={divisor}.")
        need(self.image_scale > 0, "--set image_scale", "must be > 0 (1 keeps the images' size)")
        need(len(self.scale_range) == 2 and all(isinstance(v, (int, float)) for v in self.scale_range)
             and 0 < self.scale_range[0] <= self.scale_range[1], "--set scale_range",
             "must be two numbers 0 < min <= max, e.g. --set scale_range=0.5,2.0")
        need(all(isinstance(v, (int, float)) and v > 0 for v in self.tta_scales), "--set tta_scales",
             "must be positive numbers, e.g. 0.5,1.0,1.5")
        need(self.output_stride in (8, 16, 32), "--set output_stride", "must be 8, 16 or 32")
        need(self.lr >= 0 and self.d_lr >= 0, "--set lr", "learning rates must be >= 0")
        need(0 < self.reliable_fraction < 1, "--set reliable_fraction", "must be between 0 and 1")
        need(self.distribute in ("none", "mirrored", "multiworker"), "--distribute",
             "must be none, mirrored or multiworker")
        return self

    def replace(self, **changes):
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"Unknown config field(s) {unknown}; valid fields: "
                             f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    def override(self, assignments):
        """Apply `name=value` strings, converting each value to the field's type."""
        changes = {}
        fields = {f.name: f for f in dataclasses.fields(self)}
        for item in assignments:
            if "=" not in item:
                raise ValueError(f"--set expects name=value, got {item!r}")
            name, value = item.split("=", 1)
            name = name.strip()
            if name not in fields:
                self.replace(**{name: None})  # raises with the list of valid fields
            if self.owners(name) and self.method not in self.owners(name):
                raise ValueError(f"--set {name}: a setting of --method={' / '.join(self.owners(name))}, "
                                 f"not of --method={self.method}.")
            changes[name] = _parse(value, getattr(self, name), name)
        return self.replace(**changes)

    def owners(self, name):
        """The methods a field belongs to; () for settings every method shares."""
        return self.__dataclass_fields__[name].metadata.get("methods", ())

    def to_json(self):
        """The shared settings and this method's own (other methods' fields are left out)."""
        own = {k: v for k, v in dataclasses.asdict(self).items() if self.method in self.owners(k) or not self.owners(k)}
        return json.dumps(own, indent=2)

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls().replace(**{"layout": 1, **data})


def _whole(cfg, name):
    return isinstance(getattr(cfg, name), int) and not isinstance(getattr(cfg, name), bool)


def _scalar(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse(value, default, name):
    """`value` (a string) as the type of the field's default; tuples are comma-separated."""
    if isinstance(default, tuple):
        return tuple(_scalar(v) for v in value.split(",") if v)
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        return type(default)(value)
    except ValueError:
        raise ValueError(f"--set {name}={value}: expected a value of type {type(default).__name__}") from None
