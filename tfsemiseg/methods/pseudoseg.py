"""PseudoSeg: pseudo-labels fused from the decoder and a self-attention Grad-CAM (Zou et al., ICLR 2021).

A segmenter S with a classification head shares the backbone; on each unlabeled image u:

    weak view    p = S(weak(u))                              decoder logits
    CAM          A = c4(weak(u)); CAM_c = ReLU(sum_k alpha_ck A_k) / max, alpha = mean_hw d logit_c / dA
                 (Grad-CAM with tf.GradientTape), for the classes present: sigmoid(cls(A)) >= 0.5,
                 or the image-level labels; no gradient
    SGC          m = BN(W_c [bg ; Attn(Q h, K h) CAM + CAM]), h = [c3, c4] (hypercolumn, no gradient),
                 bg = 2 - max_c (datasets with a background class only); padding / cutout masked
    pseudo-label y = sharpen_T((1 - gamma) softmax(s p) + gamma softmax(s m)), s = 1 / RMS([p, m])
    strong view  L_u = soft-CE(y, S(strong(u))) over valid pixels (cutout and padding excluded)

and on labeled images x with ground truth y_x:

    L_sup = CE(S(x), y_x)      L_sa = CE(SGC(x), y_x)      L_cls = BCE(cls(c4(x)), classes in y_x)
    L = L_sup + L_sa + L_cls + lambda_u L_u        (L_u from iteration `semi_start` on; 0 in the paper)

With image-level labels (`image_labels`: "masks", the classes in each unlabeled crop's mask, or a
file of per-image classes, `SegDataset.read_image_labels`), L_cls is computed on the unlabeled batch
with its given classes, which also select the CAM's classes. A file's classes are the whole
image's, so a crop may miss some of them. `tfsemiseg.data.Dataset.background` decides whether
a background channel exists (VOC, synthetic) or not (CamVid, Cityscapes): the classification head
then covers all C classes and the SGC adds no background channel.

Where this differs from the official code (googleinterns/wss; ../shared/docs/pseudoseg.md):
- the CAM and the SGC of unlabeled images reuse the weak view's forward pass (BatchNorm in
  training mode) instead of a separate inference-mode backbone pass: one backbone pass fewer
  per step, on CPU a third of the step;
- pseudo-labels and L_u are computed at the input resolution (the segmenter's output), not at
  stride 4; the RMS calibration is over both maps at that resolution;
- the labeled images' CAM uses the classification head in inference mode (no dropout noise), and
  their SGC attention masks nothing (the labeled stream has no padding mask);
- the cutout square is filled with noise (StrongAugment) rather than grey, and image-level
  labels come from the weak crop's mask (not cutout-masked).
"""

import math

import keras
import tensorflow as tf
from keras import layers

from tfsemiseg import losses, optim
from tfsemiseg.data import augment, pipeline
from tfsemiseg.methods.base import SegmentationMethod, register
from tfsemiseg.models.heads import resize_like
from tfsemiseg.models.normalization import BatchNormalization
from tfsemiseg.models.segmenters import STAGES, backbone_of, build_from_config, head_of, upsample


def present_classes(labels, num_classes, background=None):
    """Multi-hot [B, K] of the classes present in label maps [B, H, W] (ignore excluded); the
    background channel is dropped when `background` is its index (0)."""
    onehot = tf.one_hot(tf.cast(labels, tf.int32), num_classes)  # IGNORE_LABEL -> all zeros
    present = tf.reduce_max(onehot, axis=[1, 2])
    return present[:, 1:] if background == 0 else present


def grad_cam(features, classifier, classes):
    """Grad-CAM [B, h, w, K] in [0, 1] of the `classes` (multi-hot [B, K]) on `features` [B, h, w, D].

    alpha_ck = mean_hw d logit_c / d A_k, CAM_c = ReLU(sum_k alpha_ck A_k), zero for absent classes,
    divided by its per-image maximum. Gradients are taken with tf.GradientTape; the result is a
    constant (stop_gradient). For a linear head on pooled features this is the closed-form CAM.
    """
    features = tf.cast(features, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(features)
        logits = tf.cast(classifier(features, training=False), tf.float32)
    grads = tape.batch_jacobian(logits, features)                  # [B, K, h, w, D]
    alpha = tf.reduce_mean(grads, axis=[2, 3])                     # [B, K, D]
    cam = tf.nn.relu(tf.einsum("bhwd,bkd->bhwk", features, alpha))
    cam = cam * tf.cast(classes, tf.float32)[:, None, None, :]
    cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=[1, 2], keepdims=True))
    return tf.stop_gradient(cam)


def fuse_pseudo_labels(decoder_logits, sgc_logits, gamma=0.5, temperature=0.5):
    """Soft pseudo-labels [B, H, W, C] from two logit maps of the same size (no gradient).

    One shared calibration scalar s = 1 / RMS over every element of both maps (the batch's), then
    y = (1 - gamma) softmax(s p) + gamma softmax(s m), sharpened: y^(1/T) / sum_c y^(1/T).
    """
    decoder_logits = tf.cast(decoder_logits, tf.float32)
    sgc_logits = tf.cast(sgc_logits, tf.float32)
    both = tf.concat([decoder_logits, sgc_logits], axis=0)
    scale = tf.math.rsqrt(tf.reduce_mean(tf.square(both)) + 1e-8)
    fused = (1 - gamma) * tf.nn.softmax(scale * decoder_logits) + gamma * tf.nn.softmax(scale * sgc_logits)
    sharpened = tf.pow(fused, 1.0 / temperature)
    return tf.stop_gradient(sharpened / tf.reduce_sum(sharpened, axis=-1, keepdims=True))


@keras.saving.register_keras_serializable("tfsemiseg")
class SelfAttentionGradCAM(layers.Layer):
    """SGC: refines a CAM by self-attention over a feature hypercolumn, then calibrates it into logits.

    Inputs: hypercolumn [B, h, w, D] (constant), CAM [B, h, w, K] (constant, values in [0, 1]) and
    valid [B, h, w] (False at padding / cutout: masked as queries and keys). Query and key are 1x1
    convolutions to `attention_dim` (no bias); the value is the CAM itself, with a skip connection;
    with a background class, bg = 2 - max_c is prepended; a 1x1 convolution (no bias) + BatchNorm
    (no scale) gives the SGC logits [B, h, w, C]. Only these layers learn from the SGC's loss.
    """

    def __init__(self, num_classes, background=True, attention_dim=128, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.background, self.attention_dim = num_classes, background, attention_dim
        self.query = layers.Conv2D(attention_dim, 1, use_bias=False, name="head_sgc_query")
        self.key = layers.Conv2D(attention_dim, 1, use_bias=False, name="head_sgc_key")
        self.classifier = layers.Conv2D(num_classes, 1, use_bias=False, name="head_sgc_classifier")
        self.norm = BatchNormalization(epsilon=1e-3, momentum=0.999, scale=False, name="head_sgc_bn")

    def build(self, hypercolumn_shape, cam_shape=None, valid_shape=None):
        for layer, shape in ((self.query, hypercolumn_shape), (self.key, hypercolumn_shape),
                             (self.classifier, (None, None, None, self.num_classes)),
                             (self.norm, (None, None, None, self.num_classes))):
            if not layer.built:
                layer.build(shape)

    def attention(self, hypercolumn, valid):
        """Attention weights [B, N, N] over the N = h * w positions; invalid queries and keys masked."""
        batch = tf.shape(hypercolumn)[0]
        q = tf.reshape(self.query(hypercolumn), [batch, -1, self.attention_dim])
        k = tf.reshape(self.key(hypercolumn), [batch, -1, self.attention_dim])
        scores = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32) / math.sqrt(self.attention_dim)
        flat = tf.reshape(tf.cast(valid, tf.bool), [batch, -1])
        mask = tf.logical_and(flat[:, :, None], flat[:, None, :])
        return tf.nn.softmax(tf.where(mask, scores, -1e9), axis=-1)

    def call(self, hypercolumn, cam, valid, training=False):
        shape = tf.shape(cam)
        values = tf.reshape(tf.cast(cam, tf.float32), [shape[0], -1, shape[3]])
        refined = tf.matmul(self.attention(hypercolumn, valid), values) + values
        refined = tf.reshape(refined, shape)
        if self.background:
            refined = tf.concat([2.0 - tf.reduce_max(refined, axis=-1, keepdims=True), refined], axis=-1)
        return self.norm(self.classifier(tf.cast(refined, self.compute_dtype)), training=training)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "background": self.background,
                "attention_dim": self.attention_dim}


def build_classifier(channels, num_outputs):
    """The classification head on the last backbone features: pooling, dropout 0.5, 1x1 (dense) logits."""
    return keras.Sequential([
        keras.Input((None, None, channels)),
        layers.GlobalAveragePooling2D(name="head_cls_pool"),
        layers.Dropout(0.5, name="head_cls_dropout"),
        layers.Dense(num_outputs, name="head_cls_logits"),
    ], name="head_cls")


@register("pseudoseg")
class PseudoSeg(SegmentationMethod):
    # The method's own settings (`Config.params`): the official code's defaults.
    hyperparameters = dict(
        lambda_u=1.0,            # weight of the consistency loss on the strong view
        fusion_gamma=0.5,        # the SGC's share of the fused pseudo-label
        pseudo_temperature=0.5,  # sharpening temperature T
        attention_dim=128,       # SGC query / key width
        # "": predicted classes; "masks": from the unlabeled crops' masks; a file: "<image id> <class> ..." lines
        image_labels="",
        # Iteration from which L_u counts (0, the paper's: its networks start from ImageNet).
        semi_start=0,
    )
    loss_names = ("loss_sup", "loss_sa", "loss_cls", "loss_u", "pseudo_confidence", "classes_per_image")

    def __init__(self, segmenter, num_classes, background=None, lambda_u=1.0, gamma=0.5, temperature=0.5,
                 attention_dim=128, image_labels=False, cam_layer="c4", hypercolumn=("c3", "c4"), semi_start=0,
                 **kwargs):
        super().__init__(segmenter, num_classes, **kwargs)
        self.background, self.lambda_u, self.gamma, self.temperature = background, lambda_u, gamma, temperature
        self.image_labels, self.semi_start = image_labels, semi_start
        # One backbone pass gives the hypercolumn, the CAM features and (through the head) the logits.
        self.backbone, self.head = backbone_of(segmenter), head_of(segmenter)
        self.hypercolumn_index = [STAGES.index(n) for n in hypercolumn]
        self.cam_index = STAGES.index(cam_layer)
        channels = [int(s.shape[-1]) for s in self.backbone.outputs]
        self.num_foreground = num_classes - 1 if background is not None else num_classes
        self.classifier = build_classifier(channels[self.cam_index], self.num_foreground)
        self.sgc = SelfAttentionGradCAM(num_classes, background is not None, attention_dim, name="head_sgc")
        self.sgc.build((None, None, None, sum(channels[i] for i in self.hypercolumn_index)))

    @classmethod
    def create(cls, cfg, dataset):
        num_classes = dataset.num_classes
        model = cls(build_from_config(cfg, num_classes), num_classes, dataset.background, lambda_u=cfg.lambda_u,
                    gamma=cfg.fusion_gamma, temperature=cfg.pseudo_temperature, attention_dim=cfg.attention_dim,
                    image_labels=bool(cfg.image_labels), semi_start=cfg.semi_start, **cls.shared_settings(cfg))
        model.compile(optimizer=optim.segmenter_sgd(cfg), jit_compile=cfg.jit_compile)
        return model

    @staticmethod
    def train_data(dataset, cfg):
        """Labeled and unlabeled batches 1:1; each unlabeled crop with its strong view (and, with
        image-level labels, the classes present)."""
        from_masks = cfg.image_labels == "masks"
        given = dataset.read_image_labels(cfg.image_labels) if cfg.image_labels and not from_masks else None
        return tf.data.Dataset.zip({
            "labeled": pipeline.labeled_stream(dataset, cfg, seed=cfg.seed),
            "unlabeled": pipeline.unlabeled_stream(dataset, cfg, seed=cfg.seed + 1,
                                                   strong=augment.StrongAugment.pseudoseg(cfg.crop_size),
                                                   image_labels=from_masks, image_classes=given),
        })

    @staticmethod
    def input_files(cfg):
        """The image-level labels file, when one is given."""
        return (cfg.image_labels,) if cfg.image_labels not in ("", "masks") else ()

    def optimized_variables(self):
        return (self.segmenter.trainable_variables + self.classifier.trainable_variables
                + self.sgc.trainable_variables)

    # -- the pieces of the step --------------------------------------------------------------

    def forward(self, images, training):
        """(hypercolumn [B, h, w, D] without gradient, CAM features [B, h, w, K], logits [B, H, W, C])."""
        stages = self.backbone(images, training=training)
        logits = upsample(self.head(stages, training=training), images)
        reference = stages[self.hypercolumn_index[-1]]
        hypercolumn = tf.concat([tf.cast(resize_like(stages[i], reference), tf.float32)
                                 for i in self.hypercolumn_index], axis=-1)
        return tf.stop_gradient(hypercolumn), stages[self.cam_index], logits

    def self_attention_cam(self, hypercolumn, cam_features, classes, valid, training):
        """(CAM, SGC logits), both at the features' resolution; `valid` is at the image's."""
        cam = grad_cam(cam_features, self.classifier, classes)
        valid = tf.image.resize(tf.cast(valid, tf.float32)[..., None], tf.shape(cam)[1:3], method="nearest")[..., 0]
        return cam, self.sgc(hypercolumn, cam, valid > 0.5, training=training)

    def predicted_classes(self, cam_features):
        return tf.cast(tf.sigmoid(self.classifier(cam_features, training=False)) >= 0.5, tf.float32)

    def train_step(self, data):
        x, y = data["labeled"]["image"], data["labeled"]["label"]
        unlabeled = data["unlabeled"]
        u_weak, u_strong = unlabeled["image"], unlabeled["image_strong"]
        valid = unlabeled["valid_strong"] > 0  # padding and the cutout square excluded
        classes_x = present_classes(y, self.num_classes, self.background)

        with tf.GradientTape() as tape:
            # Labeled images: supervised CE; the SGC learns to turn CAMs into segmentations (L_sa).
            hyper_x, features_x, logits_x = self.forward(x, training=True)
            loss_sup = losses.cross_entropy(y, logits_x)
            with tape.stop_recording():
                cam_x = grad_cam(features_x, self.classifier, classes_x)
            sgc_x = self.sgc(hyper_x, cam_x, tf.ones(tf.shape(cam_x)[:3], tf.bool), training=True)
            loss_sa = losses.cross_entropy(y, resize_like(sgc_x, x))

            # Weak view: decoder logits, and the SGC of the classes present -> fused soft pseudo-labels.
            hyper_u, features_u, logits_weak = self.forward(u_weak, training=True)
            classes_u = (tf.cast(unlabeled["classes"], tf.float32)[:, 1 if self.background == 0 else 0:]
                         if self.image_labels else self.predicted_classes(features_u))
            with tape.stop_recording():
                _, sgc_u = self.self_attention_cam(hyper_u, features_u, classes_u, valid, training=True)
                pseudo = fuse_pseudo_labels(logits_weak, resize_like(sgc_u, u_weak), self.gamma, self.temperature)

            # Image-level classification: on labeled crops, or on the unlabeled ones when their labels are given.
            if self.image_labels:
                loss_cls = losses.multilabel_cross_entropy(self.classifier(features_u, training=True), classes_u)
            else:
                loss_cls = losses.multilabel_cross_entropy(self.classifier(features_x, training=True), classes_x)

            # Strong view: consistency with the pseudo-labels.
            logits_strong = self.segmenter(u_strong, training=True)
            loss_u = losses.soft_cross_entropy(pseudo, logits_strong, valid)
            semi = tf.cast(self.optimizer.iterations >= self.semi_start, tf.float32)
            loss = loss_sup + loss_sa + loss_cls + semi * self.lambda_u * loss_u
        self.update_segmenter(tape, loss)

        confidence = tf.reduce_max(pseudo, axis=-1)
        return self.log(loss_sup=loss_sup, loss_sa=loss_sa, loss_cls=loss_cls, loss_u=loss_u,
                        pseudo_confidence=losses.masked_mean(confidence, valid),
                        classes_per_image=tf.reduce_mean(tf.reduce_sum(classes_u, axis=-1)))

    def pseudo_label_views(self, images, classes=None):
        """The sources of the pseudo-label of whole images, in inference mode, as class maps [B, H, W]:
        "decoder", "cam" (CAM classes; with a background class, background where 1 - max wins),
        "sgc" and "fused" (the pseudo-label), plus "cam_max" (float [B, H, W]). `classes`: image-level
        labels [B, K], else predicted."""
        hyper, features, logits = self.forward(images, training=False)
        classes = self.predicted_classes(features) if classes is None else classes
        valid = tf.ones(tf.shape(images)[:3], tf.bool)
        cam, sgc = self.self_attention_cam(hyper, features, classes, valid, training=False)
        cam = resize_like(cam, images)
        if self.background is not None:
            cam = tf.concat([1.0 - tf.reduce_max(cam, axis=-1, keepdims=True), cam], axis=-1)
        sgc = resize_like(sgc, images)
        fused = fuse_pseudo_labels(logits, sgc, self.gamma, self.temperature)
        argmax = lambda x: tf.argmax(x, axis=-1, output_type=tf.int32)  # noqa: E731
        return {"decoder": argmax(logits), "cam": argmax(cam), "sgc": argmax(sgc), "fused": argmax(fused),
                "cam_max": tf.reduce_max(cam[..., 1:] if self.background is not None else cam, axis=-1)}

    def visualize(self, images, labels=None):
        """TensorBoard maps for fixed images: decoder prediction, CAM (max over classes), SGC's
        prediction, the fused pseudo-label, and a strong view of the image. The CAM is of the
        predicted classes, or with image-level labels, of the classes in `labels` (as in training)."""
        given = None
        if self.image_labels and labels is not None:
            given = present_classes(labels, self.num_classes, self.background)
        views = self.pseudo_label_views(images, given)
        strong = augment.StrongAugment.pseudoseg(images.shape[1])
        ignore = tf.zeros(tf.shape(images)[1:3], tf.uint8)
        return {
            "prediction": views["decoder"], "cam": views["cam_max"], "sgc": views["sgc"],
            "pseudo_label": views["fused"],
            "strong_view": tf.stack([strong(image, ignore)[0] for image in tf.unstack(images)]),
        }

