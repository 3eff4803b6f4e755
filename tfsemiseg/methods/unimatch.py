"""UniMatch: unified dual-stream perturbations, image and feature level (Yang et al., CVPR 2023).

Per step, with labeled images x, y and unlabeled images u in three views (weak u_w, strong s1 and
s2: the same crop, independent colour jitter / grey / blur), their padding mask v and two CutMix
boxes M1, M2 (../shared/docs/st_plusplus_unimatch.md, section 2):

    stages = B([x ; u_w])                                   one backbone pass
    p_x, p_w, p_fp = H([stages_x ; stages_u ; FP(stages_u)])  one head pass; FP = channel dropout
                                                            0.5 on c1 and c4 (Dropout2d)
    target  y_w = argmax p_w, c_w = max softmax p_w         no gradient
    mixed   s_i' = M_i s_i(r) + (1 - M_i) s_i, with its target, confidence and padding mixed alike,
            where r is the batch reversed (the mix source)
    p_s1, p_s2 = S([s1' ; s2'])                             one segmenter pass

    L_x  = CE(y, p_x)                                       (OHEM on Cityscapes)
    L_u(p, t, c, v) = sum_{v} CE(t, p) [c >= tau] / sum v   over the non-padded pixels
    L = (L_x + 0.25 L_u(p_s1, ...) + 0.25 L_u(p_s2, ...) + 0.5 L_u(p_fp, y_w, c_w, v)) / 2

Where this differs from the official code (LiheYoung/UniMatch, unimatch.py):
- the mix source is the same batch reversed (`u.flip(0)`, which the author says works as well,
  issues #68, #34): its pseudo-labels come from the training-mode weak pass already made, instead
  of a second loader batch and an extra inference-mode pass under no_grad;
- the FP stream decodes only the unlabeled half (the official code also decodes the labeled
  half's dropped-out features and discards them), so the head's BatchNorm sees x, u_w and FP(u_w);
- CutMix is applied to images in [0, 255] before normalisation (the official code mixes
  normalised tensors: the same thing, as normalisation is per pixel);
- the head is built without dropout as the official DeepLab-v3+ of UniMatch, on this library's
  backbones (no deep-stem ResNet: `--backbone` as for every method).
- `--set distribution_alignment=true` (off by default) is an addition, not the paper's: the
  pseudo-labels' class distribution aligned with the labeled pixels' (`DistributionAlignment`).
- `--set ema=0.99` (0, off, by default) is another: y_w and c_w come from a mean teacher, the
  exponential moving average of the segmenter's weights (`optim.update_mean_teacher`, Tarvainen &
  Valpola 2017; U2PL's teacher), instead of the segmenter's own weak logits, against the loop in
  which a network trains on its own labels. The teacher's pass is in training mode (BatchNorm on
  the weak batch's statistics, as the segmenter's weak pass and U2PL's teacher): only the weights
  change. The segmenter still passes u_w with x (its BatchNorm sees both, as the official code;
  UniMatch's FP stream decodes those features), so the teacher costs one more forward of u_w. In inference mode, with averaged moving statistics, it led FixMatch from scratch on the
  synthetic set to label nearly everything background within the first epochs (val mIoU 18.1).

    model = UniMatch.create(cfg, dataset)
    model.fit(UniMatch.train_data(dataset, cfg), steps_per_epoch=..., epochs=...)
"""

import keras
import tensorflow as tf

from tfsemiseg import losses, optim
from tfsemiseg.data import augment, pipeline
from tfsemiseg.data.io import IGNORE_LABEL
from tfsemiseg.methods.base import SegmentationMethod, register
from tfsemiseg.models.segmenters import backbone_of, build_from_config, head_of, upsample

FP_STAGES = (0, 3)  # c1 and c4: the stages the decoder reads


def feature_dropout(stages, rate=0.5, perturbed=FP_STAGES):
    """UniMatch's feature perturbation: channel dropout (nn.Dropout2d, always on: a channel of an
    image is zeroed with probability `rate`, the rest scaled by 1 / (1 - rate)) on the `perturbed`
    stages; the others pass unchanged."""
    def drop(x):
        shape = tf.shape(x)
        return tf.nn.dropout(x, rate=rate, noise_shape=[shape[0], 1, 1, shape[3]])
    return [drop(s) if i in perturbed else s for i, s in enumerate(stages)]


def pseudo_labels(logits, align=None):
    """(hard pseudo-label [B, H, W] int32, confidence [B, H, W]) of logits, without gradient; `align`
    maps the softmax first (e.g. `DistributionAlignment`)."""
    probs = tf.nn.softmax(tf.stop_gradient(tf.cast(logits, tf.float32)))
    if align is not None:
        probs = align(probs)
    return tf.argmax(probs, axis=-1, output_type=tf.int32), tf.reduce_max(probs, axis=-1)


class DistributionAlignment(keras.layers.Layer):
    """ReMixMatch's distribution alignment (Berthelot et al., ICLR 2020), per pixel; in segmentation
    DARS aligns pseudo-labels with the labeled class distribution for the same reason (He et al.,
    ICCV 2021): self-training drifts to the majority class.

        q = Normalize(p * prior / predicted)

    prior: the class frequencies of the labeled pixels, predicted: the mean softmax of the unlabeled
    weak views' non-padded pixels, both running means over steps (`momentum`; zero-started and
    normalised, which removes the start's bias). When the pseudo-labels over-predict a class its
    probabilities shrink, and the classes they under-predict grow, before argmax and the threshold.
    Not in UniMatch or FixMatch; their papers' settings leave it off (`distribution_alignment`).

    Args:
        num_classes: C.
        momentum: of the running means (0.99: about the last 100 steps).
    """

    def __init__(self, num_classes, momentum=0.99, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        # Replicas average their updates (aggregation "mean"), so every replica aligns alike.
        self.prior = self.add_weight(shape=(num_classes,), initializer="zeros", trainable=False,
                                     aggregation="mean", name="prior")
        self.predicted = self.add_weight(shape=(num_classes,), initializer="zeros", trainable=False,
                                         aggregation="mean", name="predicted")

    def _update(self, variable, frequencies):
        variable.assign(self.momentum * variable + (1 - self.momentum) * frequencies)
        return variable / tf.maximum(tf.reduce_sum(variable), 1e-12)

    def call(self, probs, labels, valid):
        """Aligned `probs` [B, H, W, C] of the unlabeled pixels (`valid` [B, H, W] marks the non-padded
        ones) given the labeled batch's `labels` [B', H', W'] (IGNORE_LABEL not counted)."""
        num_classes = tf.shape(probs)[-1]
        labeled = tf.reshape(tf.cast(labels, tf.int32), [-1])
        labeled = tf.boolean_mask(labeled, labeled != IGNORE_LABEL)
        counts = tf.math.bincount(labeled, minlength=num_classes, maxlength=num_classes, dtype=tf.float32)
        weight = tf.cast(valid, tf.float32)[..., None]
        mean_prob = tf.reduce_sum(probs * weight, [0, 1, 2]) / tf.maximum(tf.reduce_sum(weight), 1.0)
        prior = self._update(self.prior, counts / tf.maximum(tf.reduce_sum(counts), 1.0))
        predicted = self._update(self.predicted, mean_prob)
        aligned = probs * (prior + 1e-6) / (predicted + 1e-6)
        return aligned / tf.reduce_sum(aligned, -1, keepdims=True)


def confident_share(confidence, valid, tau):
    """The share of non-padded pixels whose pseudo-label is confident enough to train on."""
    return losses.masked_mean(tf.cast(confidence >= tau, tf.float32), valid)


def mix_with_reversed(box, *batches):
    """CutMix each of `batches` with the batch reversed inside `box` [B, H, W]: image i takes the
    box from image B - 1 - i, as do its pseudo-label, confidence and padding mask."""
    return [augment.cutmix(box, tf.reverse(b, [0]), b) for b in batches]


@register("unimatch")
class UniMatch(SegmentationMethod):
    """Args (besides `SegmentationMethod`'s): tau, the confidence threshold (0.95; 0 with OHEM for
    Cityscapes); ohem, OHEM cross-entropy on the labeled images; semi_start, the first iteration of
    the unsupervised losses; average_losses, L = (L_x + L_u) / 2 as the official code (else L_x + L_u);
    distribution_alignment, align the weak view's softmax with the labeled class frequencies before the
    pseudo-labels are taken (`DistributionAlignment`; off, as the paper); ema, the momentum of a mean
    teacher that gives the pseudo-labels (0: none, the paper's).

    Example:

        cfg = configs.get_config("unimatch", "synthetic").override(["distribution_alignment=true"])
        model = UniMatch.create(cfg, runner.load_dataset(cfg))
    """

    loss_names = ("loss", "loss_x", "loss_s", "loss_fp", "mask_ratio")
    strong_views = 2
    # The method's own settings (`Config.params`): the official VOC defaults; configs/unimatch.py.
    hyperparameters = dict(
        tau=0.95,    # confidence threshold of the pseudo-labels (Cityscapes: 0)
        ohem=False,  # OHEM cross-entropy on the labeled images (Cityscapes)
        # Iteration from which the unsupervised losses count; before it L = L_x (0, the paper's:
        # its networks start from ImageNet).
        semi_start=0,
        # L = (L_x + L_u) / 2 (the official code's); false: L = L_x + L_u (Sohn et al.'s FixMatch, lambda_u 1),
        # which keeps the supervised term at the dataset's learning rate, as SupOnly's.
        average_losses=True,
        # The strong views' colour jitter (brightness, contrast, saturation, hue) and grayscale
        # probability (the paper's); where colour is the class cue, hue 0 keeps it.
        color_jitter=(0.5, 0.5, 0.5, 0.25),
        p_gray=0.2,
        # The strong views' Gaussian blur probability and their CutMix probability (the paper's 0.5 each).
        p_blur=0.5,
        p_cutmix=0.5,
        # The DeepLab-v3+ head's dropouts (ASPP 0.5, decoder 0.1), which every other method's head has;
        # off as the official UniMatch head.
        head_dropout=False,
        # Align the pseudo-labels' class distribution with the labeled pixels' (`DistributionAlignment`;
        # not the paper's: against self-training's drift to the majority class).
        distribution_alignment=False,
        # Pseudo-labels from a mean teacher with this momentum (0.99: about the last 100 steps' weights);
        # 0, the paper's: from the segmenter's own weak pass.
        ema=0.0,
    )

    def __init__(self, segmenter, num_classes, tau=0.95, ohem=False, semi_start=0, distribution_alignment=False,
                 average_losses=True, ema=0.0, **kwargs):
        super().__init__(segmenter, num_classes, **kwargs)
        self.tau, self.ohem, self.semi_start = tau, ohem, semi_start
        self.average_losses = average_losses
        self.alignment = DistributionAlignment(num_classes) if distribution_alignment else None
        self.ema = ema
        self.teacher = optim.mean_teacher(segmenter) if ema else None
        self.backbone, self.head = backbone_of(segmenter), head_of(segmenter)

    @classmethod
    def create(cls, cfg, dataset):
        # UniMatch's DeepLab-v3+ has no dropout (`head_dropout`): the FP stream is its only feature noise.
        model = cls(build_from_config(cfg, dataset.num_classes, dropout=cfg.head_dropout), dataset.num_classes,
                    **cls.method_settings(cfg), **cls.shared_settings(cfg))
        model.compile(optimizer=optim.segmenter_sgd(cfg), jit_compile=cfg.jit_compile)
        return model

    @staticmethod
    def method_settings(cfg):
        """The constructor arguments this method takes from its own settings (FixMatch adds one_pass)."""
        return dict(tau=cfg.tau, ohem=cfg.ohem, semi_start=cfg.semi_start,
                    distribution_alignment=cfg.distribution_alignment, average_losses=cfg.average_losses,
                    ema=cfg.ema)

    @classmethod
    def train_data(cls, dataset, cfg):
        """Labeled and unlabeled batches 1 : 1; each unlabeled crop with its named strong views and
        CutMix boxes."""
        return tf.data.Dataset.zip({
            "labeled": pipeline.labeled_stream(dataset, cfg, seed=cfg.seed),
            "unlabeled": pipeline.unlabeled_stream(dataset, cfg, seed=cfg.seed + 1,
                                                   strong=augment.StrongAugment.unimatch(
                                                       jitter=cfg.color_jitter, p_gray=cfg.p_gray,
                                                       p_blur=cfg.p_blur),
                                                   strong_views=cls.strong_views, mix_boxes=True,
                                                   p_mix=cfg.p_cutmix),
        })

    def pseudo_labels(self, logits_w, u_w, labels, valid):
        """(target y_w, confidence c_w) of the weak view `u_w`: of its training-pass logits `logits_w`, or
        of the mean teacher's with `ema`; aligned with the labeled batch's class frequencies when
        `distribution_alignment` is on."""
        if self.teacher is not None:
            logits_w = self.teacher(u_w, training=True)
        if self.alignment is None:
            return pseudo_labels(logits_w)
        return pseudo_labels(logits_w, lambda probs: self.alignment(probs, labels, valid))

    def supervised_loss(self, labels, logits):
        return losses.ohem_cross_entropy(labels, logits) if self.ohem else losses.cross_entropy(labels, logits)

    def unsupervised_loss(self, logits, target, confidence, valid):
        return losses.confident_cross_entropy(target, logits, confidence, self.tau, valid)

    def update_segmenter(self, tape, loss):
        """The optimizer's step, then the mean teacher's (with `ema`)."""
        super().update_segmenter(tape, loss)
        if self.teacher is not None:
            optim.update_mean_teacher(self.teacher, self.segmenter, self.ema, self.optimizer.iterations)

    def combine(self, loss_x, loss_u):
        """(L_x + L_u) / 2 (L_x + L_u without `average_losses`) from `semi_start` on (L_u: the weighted
        unsupervised losses), L_x before it."""
        on = tf.cast(self.optimizer.iterations >= self.semi_start, tf.float32)
        semi = (loss_x + loss_u) / 2 if self.average_losses else loss_x + loss_u
        return on * semi + (1 - on) * loss_x

    @staticmethod
    def unpack(data):
        """(x, y, the unlabeled views, u_w, its padding mask as bool) of a step's batch."""
        u = data["unlabeled"]
        return data["labeled"]["image"], data["labeled"]["label"], u, u["image"], u["valid"] > 0

    def train_step(self, data):
        x, y, u, u_w, valid = self.unpack(data)
        n = tf.shape(x)[0]

        with tf.GradientTape() as tape:
            # x and u_w through the backbone once; the head decodes x, u_w and u_w's perturbed features.
            stages = self.backbone(tf.concat([x, u_w], 0), training=True)
            fp = feature_dropout([s[n:] for s in stages])
            logits = upsample(self.head([tf.concat([s, f], 0) for s, f in zip(stages, fp)], training=True),
                              tf.concat([x, u_w, u_w], 0))
            logits_x, logits_w, logits_fp = logits[:n], logits[n:2 * n], logits[2 * n:]
            target, confidence = self.pseudo_labels(logits_w, u_w, y, valid)

            # Two strong views, each CutMixed with the reversed batch, through the segmenter once.
            mixed = [mix_with_reversed(u[f"box_{i}"], u[f"image_strong_{i}"], target, confidence, valid)
                     for i in (1, 2)]
            logits_s1, logits_s2 = tf.split(self.segmenter(tf.concat([m[0] for m in mixed], 0), training=True), 2)

            loss_x = self.supervised_loss(y, logits_x)
            loss_s1 = self.unsupervised_loss(logits_s1, *mixed[0][1:])
            loss_s2 = self.unsupervised_loss(logits_s2, *mixed[1][1:])
            loss_fp = self.unsupervised_loss(logits_fp, target, confidence, valid)
            loss = self.combine(loss_x, 0.25 * loss_s1 + 0.25 * loss_s2 + 0.5 * loss_fp)
        self.update_segmenter(tape, loss)

        return self.log(loss=loss, loss_x=loss_x, loss_s=(loss_s1 + loss_s2) / 2, loss_fp=loss_fp,
                        mask_ratio=confident_share(confidence, valid, self.tau))
