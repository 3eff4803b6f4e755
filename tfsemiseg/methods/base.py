"""What every method shares: the segmenter, evaluation (mIoU) and the segmenter's update step.

A method subclasses `SegmentationMethod` and writes its `train_step` as its paper's
equations; evaluation (`test_step`), inference with padding or sliding windows, loss
trackers and the optimiser step with the head LR multiplier come from here.
"""

import os
import sys

import keras
import tensorflow as tf

from tfsemiseg import metrics, optim, training
from tfsemiseg.inference import padded_logits, sliding_window_scores
from tfsemiseg.callbacks import SegmentationImages


# --method name -> class: every method module adds itself with `@register`; `tfsemiseg.methods`
# imports every module of the package, so a new method is one file (and its config and tests).
METHODS = {}


def register(name):
    """Class decorator: `--method=name` trains this class (a SegmentationMethod, or a driver of several
    fits with a `run` classmethod, as ST / ST++). `--help` and the benchmarks list what registered."""
    def add(cls):
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"two methods registered as {name!r}: {METHODS[name].__name__} and {cls.__name__}")
        METHODS[name] = cls
        return cls
    return add


def describe(cls):
    """One line for --help: the class's `description`, else the first line of its module's docstring."""
    text = getattr(cls, "description", None) or sys.modules[cls.__module__].__doc__ or cls.__name__
    return text.strip().splitlines()[0].rstrip(".")


class SegmentationMethod(keras.Model):
    """Base of all methods.

    Args:
        segmenter: a model from raw images [B, H, W, 3] to logits [B, H, W, C].
        num_classes: C.
        head_lr_mult: gradient multiplier of `head_*` layers (10 in DeepLab recipes).
        weight_decay: added to the segmenter's gradient as wd * w, before the multiplier (the
            papers' SGD; `optim.gradient_weight_decay`); 0 when the optimizer decays (Keras' kind).
        eval_window, eval_stride: sliding-window evaluation (e.g. Cityscapes); whole images if None.
    """

    loss_names = ("loss",)
    # The method's own settings and their defaults, {name: default}; `configs.get_config` puts them
    # in the run's `Config.params`, `--set name=value` overrides them and config.json records them.
    hyperparameters = {}

    def __init__(self, segmenter, num_classes, head_lr_mult=10.0, eval_window=None, eval_stride=None,
                 weight_decay=0.0, **kwargs):
        super().__init__(**kwargs)
        self.segmenter = segmenter
        self.num_classes = num_classes
        self.head_lr_mult = head_lr_mult
        self.weight_decay = weight_decay
        self.eval_window = eval_window
        self.eval_stride = eval_stride or (eval_window and eval_window * 2 // 3)
        self.miou = metrics.MeanIoU(num_classes)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names}
        self.built = True  # the networks are functional models, built at construction

    @classmethod
    def create(cls, cfg, dataset):
        """The compiled method for a `Config` and a `SegDataset` (implemented by each method), with
        `shared_settings(cfg)` passed to the constructor and `optim.segmenter_sgd(cfg)` compiled."""
        raise NotImplementedError

    @classmethod
    def run(cls, cfg, dataset, strategy, verbose=1):
        """Train a run: one `fit` of the compiled method on `train_data` (`training.fit_stage`: backups,
        checkpoints, TensorBoard, the final model and metrics.json). What `runner.train` calls for
        every method; a driver of several fits (ST, ST++) has its own `run`."""
        with strategy.scope():
            model = cls.create(cfg, dataset)
        log_dir = os.path.join(cfg.workdir, "logs")
        return training.fit_stage(model, cls.train_data(dataset, cfg), cfg, dataset, cfg.workdir, log_dir,
                                  callbacks=cls.extra_callbacks(model, dataset, cfg, log_dir), verbose=verbose,
                                  data_paths=dataset.paths("labeled") + dataset.paths("unlabeled"))

    @staticmethod
    def shared_settings(cfg):
        """The constructor arguments every method takes from a config: the head's LR multiplier, the
        weight decay to add to the gradient (with `optim.segmenter_sgd`, which then does not decay)
        and the evaluation window."""
        return dict(head_lr_mult=cfg.head_lr_mult, weight_decay=optim.gradient_weight_decay(cfg),
                    eval_window=cfg.eval_window)

    @staticmethod
    def train_data(dataset, cfg):
        """The tf.data stream its train_step consumes (implemented by each method)."""
        raise NotImplementedError

    @staticmethod
    def input_files(cfg):
        """Files besides the dataset whose contents the run trains on; a resumed run refuses to go on
        when one has changed (`runner`). None by default."""
        return ()

    @staticmethod
    def extra_callbacks(model, dataset, cfg, log_dir):
        """Callbacks a run adds to Keras' own: TensorBoard images of `visualize` for a few val images."""
        return [SegmentationImages.from_dataset(dataset, cfg, log_dir)]

    def compile(self, optimizer=None, **kwargs):
        """Keras' compile, with the segmenter's optimizer built on the segmenter's variables now.

        Built here, under the strategy scope, on exactly the variables `update_segmenter` steps
        (`optimized_variables`).
        Left lazy, a resumed run would build it when restoring the backup, on *all* the model's
        trainable variables (ALSS's discriminator included): a different variable count, so Keras
        skipped the saved optimizer state and the run silently restarted its LR schedule.
        """
        super().compile(optimizer=optimizer, **kwargs)
        if optimizer is not None:
            self.optimizer.build(self.optimized_variables())

    def call(self, images, training=False):
        return self.segmenter(images, training=training)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' symbolic build before `fit` / `evaluate`, skipped when there is nothing to build
        (a method's networks are built at construction, its optimizers at compile).

        Keras' version first averages one input batch across replicas with `strategy.reduce`, which
        fails on dict batches under MultiWorkerMirroredStrategy ("Attempt to convert a value
        ({'image': PerReplica...}) ... to a Tensor"; keras-team/keras#20329, open).
        """
        if self.built and (self.optimizer is None or self.optimizer.built):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def predict_scores(self, images):
        """Class probabilities [B, H, W, C]: whole images (padded to a multiple of 32) or by sliding window."""
        images = tf.cast(images, tf.float32)
        if self.eval_window:
            return sliding_window_scores(lambda x: self.segmenter(x, training=False), images,
                                         self.eval_window, self.eval_stride)
        return tf.nn.softmax(padded_logits(self.segmenter, images))

    def test_step(self, data):
        self.miou.update_state(data["label"], self.predict_scores(data["image"]))
        return _step_logs({"miou": self.miou.result()})

    def visualize(self, images, labels=None):
        """Named [B, H, W] maps for TensorBoard: int class maps or floats in [0, 1]. Methods add theirs.
        `labels`: the images' label maps (shown beside them), for a method that needs what they tell."""
        return {"prediction": tf.argmax(self.predict_scores(images), axis=-1, output_type=tf.int32)}

    def predict_step(self, data):
        images = data["image"] if isinstance(data, dict) else data
        return tf.argmax(self.predict_scores(images), axis=-1, output_type=tf.int32)

    # -- training helpers ------------------------------------------------------------------

    def minimize(self, tape, loss, variables, optimizer, lr_multipliers=None, weight_decay=0.0):
        """Backpropagate `loss` (recorded on `tape`) into `variables` and step `optimizer`.

        Handles mixed-precision loss scaling and tf.distribute (replica gradients are summed,
        so each replica's loss is divided by their number), weight decay in the gradient and
        optional per-variable LR multipliers, so a train_step only writes its losses.
        """
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # Seeding backprop with these factors is differentiating the scaled loss.
        seed = optimizer.scale_loss(tf.constant(1.0 / replicas, loss.dtype))
        grads = tape.gradient(loss, variables, output_gradients=seed)
        if weight_decay:  # the gradient of (wd / 2) |w|^2, seeded as the loss is
            grads = [g if g is None else g + seed * weight_decay * tf.cast(v, g.dtype)
                     for g, v in zip(grads, variables)]
        if lr_multipliers is not None:
            grads = [g * m if m != 1.0 else g for g, m in zip(grads, lr_multipliers)]
        optimizer.apply_gradients(zip(grads, variables))

    def optimized_variables(self):
        """What the compiled optimizer steps: the segmenter's trainable variables, and those of the
        heads a method trains with it (PseudoSeg's classifier and SGC). ALSS's discriminator has its own."""
        return self.segmenter.trainable_variables

    def update_segmenter(self, tape, loss):
        """Step the compiled optimizer on `loss` for `optimized_variables`, `head_*` layers at `head_lr_mult` x LR."""
        variables = self.optimized_variables()
        self.minimize(tape, loss, variables, self.optimizer, optim.lr_multipliers(variables, self.head_lr_mult),
                      self.weight_decay)

    def log(self, **values):
        """Update the named loss trackers; returns the dict a train_step returns."""
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return _step_logs({name: tracker.result() for name, tracker in self.trackers.items()})


def _step_logs(logs):
    """What a train / test step returns. Under MultiWorkerMirroredStrategy Keras 3 averages every
    returned value across workers with `strategy.reduce("MEAN", value, axis=0)`, which fails on the
    scalars every step returns ("Invalid reduction dimension 0 for input with 0 dimensions";
    tensorflow/tensorflow#72388): there they are returned as shape [1], which it reduces to the
    scalar mean over workers. Elsewhere they stay scalars."""
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs
