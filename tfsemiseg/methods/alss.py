"""ALSS / AdvSemiSeg: adversarial learning for semi-supervised segmentation (Hung et al., BMVC 2018).

The segmenter S is the generator; a fully convolutional discriminator D tells predicted
probability maps from one-hot ground truth pixel by pixel, and its confidence map selects
the trustworthy regions of unlabeled predictions as self-taught labels.

Segmenter loss (Eq. 2 of the paper):
    L_seg = L_ce + lambda_adv * L_adv + lambda_semi * L_semi
with, on unlabeled images, also lambda_semi_adv * L_adv (the official code's weight 0.001):
    L_ce   (Eq. 3): cross-entropy on labeled pixels (ignore 255);
    L_adv  (Eq. 4): BCE(D(S(x)), 1): fool D with the predicted probability maps;
    L_semi (Eq. 5): cross-entropy against argmax S(u) where sigmoid(D(S(u))) > T_semi,
                    from iteration `semi_start` on (exactly zero before).
Discriminator loss (Eq. 1):
    L_D = BCE(D(S(x)), 0) + BCE(D(Y_n), 1) on detached predictions and the one-hot ground truth
    of an independently sampled labeled batch; ignore pixels excluded.

Gradients are isolated: L_seg is differentiated w.r.t. S's variables only and L_D w.r.t.
D's only (D's "fake" input is the same forward pass, so D runs three times per step, not four;
D has no BatchNorm or dropout, so its training flag changes nothing).

    model = AdvSemiSeg.create(cfg, dataset)              # compiled with both optimizers
    model.fit(AdvSemiSeg.train_data(dataset, cfg), ...)  # {"labeled", "unlabeled", "real"} batches
"""

import keras
import tensorflow as tf

from tfsemiseg import losses, optim
from tfsemiseg.data import pipeline
from tfsemiseg.data.io import IGNORE_LABEL
from tfsemiseg.methods.base import SegmentationMethod, register
from tfsemiseg.models.discriminator import build_discriminator
from tfsemiseg.models.segmenters import build_from_config


class DiscriminatorLearningRate(keras.callbacks.Callback):
    """Adds `d_learning_rate` to the logs (TensorBoard, progress bar); Keras' TensorBoard callback
    already logs the compiled (segmenter's) optimizer's rate."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["d_learning_rate"] = float(keras.ops.convert_to_numpy(self.model.d_optimizer.learning_rate))


@register("alss")
class AdvSemiSeg(SegmentationMethod):
    # The method's own settings (`Config.params`): Hung et al.'s defaults; configs/alss.py per dataset.
    hyperparameters = dict(
        lambda_adv=0.01,        # adversarial loss on labeled predictions
        lambda_semi_adv=0.001,  # adversarial loss on unlabeled predictions
        lambda_semi=0.1,        # semi-supervised (confidence-masked self-training) loss
        T_semi=0.2,             # the discriminator's confidence threshold for the semi loss
        semi_start=5000,        # iteration from which the semi loss counts
        semi_start_adv=0,       # iteration from which the unlabeled adversarial loss counts
        d_lr=1e-4, d_beta_1=0.9, d_beta_2=0.99,  # the discriminator's Adam
    )
    loss_names = ("loss_ce", "loss_adv", "loss_semi_adv", "loss_semi", "loss_d",
                  "semi_fraction", "d_acc_real", "d_acc_fake")

    def __init__(self, segmenter, discriminator, num_classes, lambda_adv=0.01, lambda_semi_adv=0.001,
                 lambda_semi=0.1, T_semi=0.2, semi_start=5000, semi_start_adv=0, **kwargs):
        super().__init__(segmenter, num_classes, **kwargs)
        self.discriminator = discriminator
        self.lambda_adv, self.lambda_semi_adv, self.lambda_semi = lambda_adv, lambda_semi_adv, lambda_semi
        self.T_semi, self.semi_start, self.semi_start_adv = T_semi, semi_start, semi_start_adv

    @classmethod
    def create(cls, cfg, dataset):
        num_classes = dataset.num_classes
        model = cls(build_from_config(cfg, num_classes), build_discriminator(num_classes), num_classes,
                    lambda_adv=cfg.lambda_adv, lambda_semi_adv=cfg.lambda_semi_adv, lambda_semi=cfg.lambda_semi,
                    T_semi=cfg.T_semi, semi_start=cfg.semi_start, semi_start_adv=cfg.semi_start_adv,
                    **cls.shared_settings(cfg))
        model.compile(optimizer=optim.segmenter_sgd(cfg),
                      d_optimizer=optim.poly_adam(cfg.d_lr, cfg.iterations, cfg.d_beta_1, cfg.d_beta_2),
                      jit_compile=cfg.jit_compile)
        return model

    def compile(self, optimizer, d_optimizer, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        if keras.mixed_precision.global_policy().name == "mixed_float16":
            d_optimizer = keras.optimizers.LossScaleOptimizer(d_optimizer)
        # Built here, under the strategy scope: slots created lazily inside a distributed step fail.
        d_optimizer.build(self.discriminator.trainable_variables)
        self.d_optimizer = d_optimizer

    @staticmethod
    def train_data(dataset, cfg):
        """Three independent streams per iteration, as the original: labeled and unlabeled batches
        for S, and another labeled batch whose one-hot ground truth is D's "real" input."""
        return tf.data.Dataset.zip({
            "labeled": pipeline.labeled_stream(dataset, cfg, seed=cfg.seed),
            "unlabeled": pipeline.unlabeled_stream(dataset, cfg, seed=cfg.seed + 1),
            "real": pipeline.labeled_stream(dataset, cfg, seed=cfg.seed + 2),
        })

    @staticmethod
    def extra_callbacks(model, dataset, cfg, log_dir):
        """The shared callbacks, and the discriminator's learning rate in the logs."""
        return [DiscriminatorLearningRate(), *SegmentationMethod.extra_callbacks(model, dataset, cfg, log_dir)]

    def semi_targets(self, logits_u, d_logits_u, valid):
        """Self-taught labels (Eq. 5): argmax S(u) where D's confidence > T_semi, else ignore.

        Neither argmax nor the comparison has a gradient, so the targets are constants.
        """
        confident = tf.logical_and(tf.sigmoid(d_logits_u[..., 0]) > self.T_semi, valid)
        pseudo = tf.argmax(logits_u, axis=-1, output_type=tf.int32)
        return tf.where(confident, pseudo, IGNORE_LABEL), confident

    def train_step(self, data):
        x, y = data["labeled"]["image"], data["labeled"]["label"]
        u, valid_u = data["unlabeled"]["image"], data["unlabeled"]["valid"] > 0
        y_real = data["real"]["label"]
        step = self.optimizer.iterations
        labeled_x = y != IGNORE_LABEL

        real_maps = tf.one_hot(tf.cast(y_real, tf.int32), self.num_classes)  # ignore pixels -> all zeros
        labeled_real = y_real != IGNORE_LABEL

        # One forward pass feeds both losses: `tape` differentiates L_seg w.r.t. S only and
        # `d_tape` L_D w.r.t. D only, so D(S(x)) serves as L_adv's input and as D's "fake".
        with tf.GradientTape() as tape, tf.GradientTape() as d_tape:
            logits = self.segmenter(x, training=True)
            logits_u = self.segmenter(u, training=True)
            p, p_u = tf.nn.softmax(logits), tf.nn.softmax(logits_u)
            d_fake = self.discriminator(p, training=True)
            d_logits_u = self.discriminator(p_u, training=True)

            loss_ce = losses.cross_entropy(y, logits)
            loss_adv = losses.binary_cross_entropy(d_fake, 1.0, labeled_x)
            loss_semi_adv = losses.binary_cross_entropy(d_logits_u, 1.0, valid_u) * tf.cast(
                step >= self.semi_start_adv, tf.float32)
            targets, confident = self.semi_targets(logits_u, d_logits_u, valid_u)
            loss_semi = losses.cross_entropy(targets, logits_u) * tf.cast(step >= self.semi_start, tf.float32)
            loss_seg = (loss_ce + self.lambda_adv * loss_adv
                        + self.lambda_semi_adv * loss_semi_adv + self.lambda_semi * loss_semi)

            d_real = self.discriminator(real_maps, training=True)
            loss_d = (losses.binary_cross_entropy(d_fake, 0.0, labeled_x)
                      + losses.binary_cross_entropy(d_real, 1.0, labeled_real))
        self.update_segmenter(tape, loss_seg)
        self.minimize(d_tape, loss_d, self.discriminator.trainable_variables, self.d_optimizer)

        return self.log(
            loss_ce=loss_ce, loss_adv=loss_adv, loss_semi_adv=loss_semi_adv, loss_semi=loss_semi, loss_d=loss_d,
            semi_fraction=_fraction(confident, valid_u),
            d_acc_real=_fraction(d_real[..., 0] > 0, labeled_real),
            d_acc_fake=_fraction(d_fake[..., 0] < 0, labeled_x))

    def visualize(self, images, labels=None):
        scores = self.predict_scores(images)
        confidence = tf.sigmoid(self.discriminator(scores, training=False))[..., 0]
        pseudo = tf.argmax(scores, axis=-1, output_type=tf.int32)
        return {"prediction": pseudo, "confidence": confidence,
                "semi_mask": tf.where(confidence > self.T_semi, pseudo, IGNORE_LABEL)}


def _fraction(condition, mask):
    mask = tf.cast(mask, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(tf.cast(condition, tf.float32) * mask), tf.reduce_sum(mask))
