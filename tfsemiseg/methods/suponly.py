"""SupOnly: the supervised baseline every semi-supervised method is compared with.

Trains the segmenter on the labeled split only, with pixel-wise cross-entropy (ignore 255),
SGD + momentum, poly LR decay, weight decay and a 10x head LR (the DeepLab recipe).

    model = SupOnly.create(cfg, dataset)
    model.fit(SupOnly.train_data(dataset, cfg), steps_per_epoch=..., epochs=...)
"""

import tensorflow as tf

from tfsemiseg import losses, optim
from tfsemiseg.data import pipeline
from tfsemiseg.methods.base import SegmentationMethod
from tfsemiseg.models.segmenters import build_from_config


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

    def train_step(self, data):
        with tf.GradientTape() as tape:
            logits = self.segmenter(data["image"], training=True)
            loss_ce = losses.cross_entropy(data["label"], logits)
        self.update_segmenter(tape, loss_ce)
        return self.log(loss_ce=loss_ce)
