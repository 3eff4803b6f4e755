"""Callbacks that Keras does not already provide."""

import time

import keras


class Throughput(keras.callbacks.Callback):
    """Measures training images per second between batch ends (so tracing and evaluation are excluded)."""

    def __init__(self, images_per_step):
        super().__init__()
        self.images_per_step = images_per_step
        self.seconds = 0.0
        self.steps = 0
        self._last = None

    def on_epoch_begin(self, epoch, logs=None):
        self._last = None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._last is not None:
            self.seconds += now - self._last
            self.steps += 1
        self._last = now

    @property
    def images_per_sec(self):
        return self.steps * self.images_per_step / self.seconds if self.seconds else 0.0


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate of every optimizer of the model to the logs (for TensorBoard)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for name in ("optimizer", "d_optimizer"):
            opt = getattr(self.model, name, None)
            if opt is not None:
                lr = opt.learning_rate
                logs["lr" if name == "optimizer" else "d_lr"] = float(keras.ops.convert_to_numpy(lr))
