"""SupOnly: the supervised baseline every semi-supervised method is compared with.

Trains the segmenter on the labeled split only, with pixel-wise cross-entropy (ignore 255),
SGD + momentum, poly LR decay, weight decay and a 10x head LR (the DeepLab recipe).
A run keeps its segmenter at 1/3 and 2/3 of training (`snapshots/`), so ST / ST++ can take a
finished SupOnly run as their teacher (`--set teacher=<run>`) instead of training it again.

    model = SupOnly.create(cfg, dataset)
    model.fit(SupOnly.train_data(dataset, cfg), steps_per_epoch=..., epochs=...)
"""

import tensorflow as tf

import os

from tfsemiseg import losses, optim, training
from tfsemiseg.data import pipeline
from tfsemiseg.methods.base import SegmentationMethod, register
from tfsemiseg.models.segmenters import build_from_config


@register("suponly")
class SupOnly(SegmentationMethod):
    loss_names = ("loss_ce",)

    @classmethod
    def create(cls, cfg, dataset):
        model = cls(build_from_config(cfg, dataset.num_classes), dataset.num_classes, **cls.shared_settings(cfg))
        model.compile(optimizer=optim.segmenter_sgd(cfg), jit_compile=cfg.jit_compile)
        return model

    @staticmethod
    def train_data(dataset, cfg):
        return pipeline.labeled_stream(dataset, cfg, seed=cfg.seed)

    @staticmethod
    def extra_callbacks(model, dataset, cfg, log_dir):
        """The shared callbacks, and the teacher snapshots ST++ compares (`cfg.workdir/snapshots/`)."""
        snapshots = training.SaveSegmenterAt(training.snapshot_steps(cfg.iterations),
                                             os.path.join(cfg.workdir, "snapshots"))
        return SegmentationMethod.extra_callbacks(model, dataset, cfg, log_dir) + [snapshots]

    def train_step(self, data):
        with tf.GradientTape() as tape:
            logits = self.segmenter(data["image"], training=True)
            loss_ce = losses.cross_entropy(data["label"], logits)
        self.update_segmenter(tape, loss_ce)
        return self.log(loss_ce=loss_ce)
