"""The run configuration: the settings every method shares, plus the run's method's own.

The shared settings are this dataclass's fields. A method declares its own hyperparameters beside
it, as `hyperparameters = {name: default}` on its class (e.g. ALSS's lambda_adv, UniMatch's tau);
`configs.get_config` puts them in `params`, and they read as attributes like the shared ones
(`cfg.lambda_adv`). Paper settings live in `configs/<method>.py` as plain Python; every setting
can be overridden with `--set name=value` (typed by its default) or a dedicated flag. config.json
holds both, flat; `--set lambda_u=2 --method=alss` is an error instead of a silently ignored value.
"""

import dataclasses
import json
import math


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
    # the method's own hyperparameters (its class's `hyperparameters`, then its configs/ settings)
    params: dict = dataclasses.field(default_factory=dict)

    def __getattr__(self, name):  # only for names that are not fields: the method's own settings
        params = self.__dict__.get("params") or {}
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__} has no setting {name!r} (method {self.__dict__.get('method')!r})")

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
            if name not in self.settings():
                continue
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
        if "tta_scales" in self.params:
            need(all(isinstance(v, (int, float)) and v > 0 for v in self.tta_scales), "--set tta_scales",
                 "must be positive numbers, e.g. 0.5,1.0,1.5")
        need(self.output_stride in (8, 16, 32), "--set output_stride", "must be 8, 16 or 32")
        need(self.lr >= 0, "--set lr", "must be >= 0")
        if "d_lr" in self.params:
            need(self.d_lr >= 0, "--set d_lr", "must be >= 0")
        if "color_jitter" in self.params:
            need(len(self.color_jitter) == 4 and all(isinstance(v, (int, float)) and v >= 0 for v in self.color_jitter)
                 and self.color_jitter[3] <= 0.5, "--set color_jitter",
                 "must be four numbers >= 0 (brightness, contrast, saturation, hue <= 0.5), e.g. 0.5,0.5,0.5,0.25")
        for name in ("p_gray", "p_blur", "p_cutmix"):
            if name in self.params:
                need(0 <= self.params[name] <= 1, f"--set {name}", "must be a probability in [0, 1]")
        if "reliable_fraction" in self.params:
            need(0 < self.reliable_fraction < 1, "--set reliable_fraction", "must be between 0 and 1")
        need(self.distribute in ("none", "mirrored", "multiworker"), "--distribute",
             "must be none, mirrored or multiworker")
        return self

    def shared(self):
        """The settings every method shares, as a dict (no `params`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "params"}

    def settings(self):
        """Every setting of the run, shared and the method's own, as one flat dict (config.json)."""
        return {**self.shared(), **self.params}

    def replace(self, **changes):
        """A copy with `changes` applied, to shared settings or to the method's own."""
        fields = {f.name for f in dataclasses.fields(self)} - {"params"}
        unknown = sorted(set(changes) - fields - set(self.params) - {"params"})
        if unknown:
            own = f"; --method={self.method}'s own: {', '.join(self.params)}" if self.params else ""
            raise ValueError(f"Unknown config field(s) {unknown} for --method={self.method}. Shared settings: "
                             f"{', '.join(sorted(fields))}{own}.")
        params = dict(changes.pop("params", self.params))
        params.update({k: changes.pop(k) for k in list(changes) if k not in fields})
        return dataclasses.replace(self, params=params, **changes)

    def override(self, assignments):
        """Apply `name=value` strings, converting each value to the type of the setting's default."""
        changes = {}
        for item in assignments:
            if "=" not in item:
                raise ValueError(f"--set expects name=value, got {item!r}")
            name, value = item.split("=", 1)
            name = name.strip()
            settings = self.settings()
            if name not in settings:
                own = ", ".join(self.params) or "none"
                raise ValueError(f"--set {name}: not a setting of --method={self.method} (its own settings: {own}; "
                                 f"shared: {', '.join(sorted(self.shared()))}).")
            changes[name] = _parse(value, settings[name], name)
        return self.replace(**changes)

    def to_json(self):
        """The shared settings and this method's own, flat."""
        return json.dumps(self.settings(), indent=2)

    @classmethod
    def from_json(cls, text):
        """A config from `to_json`'s text: the fields are shared settings, the other keys the method's own."""
        data = json.loads(text)
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        fields = {f.name for f in dataclasses.fields(cls)} - {"params"}
        params = {k: v for k, v in data.items() if k not in fields}
        return cls(params=params).replace(**{"layout": 1, **{k: v for k, v in data.items() if k in fields}})


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
