"""FixMatch for segmentation: UniMatch's baseline, one CutMixed strong view (Sohn et al., NeurIPS 2020;
as in LiheYoung/UniMatch, fixmatch.py).

    p_x, p_w = S([x ; u_w])                          one segmenter pass
    target  y_w = argmax p_w, c_w = max softmax p_w  no gradient
    mixed   s' = M s(r) + (1 - M) s, target, confidence and padding mixed alike (r: batch reversed)
    L = (CE(y, p_x) + sum_{v'} CE(y_w', S(s')) [c_w' >= tau] / sum v') / 2

UniMatch without the feature-perturbation stream and the second strong view; its settings (tau,
OHEM, the head without dropout) and its deviations from the official code are UniMatch's
(`tfsemiseg/methods/unimatch.py`). With `--set one_pass=true` (off, UniMatch's code), x, u_w and s'
go through the segmenter in one pass, as Sohn et al.'s code batches them: BatchNorm then normalises
the strong views with the statistics of the whole step's batch, not of the strong views alone.
"""

import tensorflow as tf

from tfsemiseg.methods.base import register
from tfsemiseg.methods.unimatch import UniMatch, confident_share, mix_with_reversed


@register("fixmatch")
class FixMatch(UniMatch):
    loss_names = ("loss", "loss_x", "loss_s", "mask_ratio")
    strong_views = 1
    hyperparameters = dict(UniMatch.hyperparameters, one_pass=False)

    def __init__(self, segmenter, num_classes, one_pass=False, **kwargs):
        super().__init__(segmenter, num_classes, **kwargs)
        self.one_pass = one_pass

    @staticmethod
    def method_settings(cfg):
        return dict(UniMatch.method_settings(cfg), one_pass=cfg.one_pass)

    def train_step(self, data):
        x, y, u, u_w, valid = self.unpack(data)
        n = tf.shape(x)[0]

        box = u["box_1"]
        strong, = mix_with_reversed(box, u["image_strong_1"])
        with tf.GradientTape() as tape:
            if self.one_pass:
                logits = self.segmenter(tf.concat([x, u_w, strong], 0), training=True)
                logits_x, logits_w, logits_s = logits[:n], logits[n:2 * n], logits[2 * n:]
            else:
                logits = self.segmenter(tf.concat([x, u_w], 0), training=True)
                logits_x, logits_w = logits[:n], logits[n:]
            target, confidence = self.pseudo_labels(logits_w, u_w, y, valid)
            target_s, confidence_s, valid_s = mix_with_reversed(box, target, confidence, valid)
            if not self.one_pass:
                logits_s = self.segmenter(strong, training=True)
            loss_x = self.supervised_loss(y, logits_x)
            loss_s = self.unsupervised_loss(logits_s, target_s, confidence_s, valid_s)
            loss = self.combine(loss_x, loss_s)
        self.update_segmenter(tape, loss)

        return self.log(loss=loss, loss_x=loss_x, loss_s=loss_s,
                        mask_ratio=confident_share(confidence, valid, self.tau))

