"""tf.data pipelines: the labeled stream, the unlabeled stream and the evaluation set.

The two training streams are independent, infinite and shuffled (each with its own seed),
so a method zips as many of them as its train_step consumes. Everything runs in tf.data
(`map(num_parallel_calls=AUTOTUNE)`, `prefetch`), never in Python generators.

Batches:
- labeled: {"image": float32 [B, crop, crop, 3] in [0, 255], "label": uint8 [B, crop, crop]}
- unlabeled: {"image": ..., "valid": uint8 [B, crop, crop]} (0 where padded, 1 elsewhere); with
  `strong`, also "image_strong" (photometric + cutout) and its "valid_strong" (0 under the box too);
  with `strong_views=n`, n named views "image_strong_1" .. "image_strong_n" instead (the same crop,
  each with its own photometric draw) and, with `mix_boxes`, "box_1" .. "box_n", uint8 CutMix boxes.
  (uint8, not bool: tf.distribute cannot split bool batches across replicas.)
- eval: whole images, padded per batch (image 0, label IGNORE_LABEL).
"""

import tensorflow as tf

from tfsemiseg.data import augment
from tfsemiseg.data.io import IGNORE_LABEL

AUTOTUNE = tf.data.AUTOTUNE


def prescale(example, image_scale):
    """Resize whole examples once (e.g. 0.5 for CPU-sized runs); identity when 1."""
    if image_scale == 1:
        return example
    size = tf.cast(tf.round(tf.cast(tf.shape(example["image"])[:2], tf.float32) * image_scale), tf.int32)
    image, label = augment.resize(example["image"], example.get("label"), size)
    out = {"image": image}
    if label is not None:
        out["label"] = label
    return out


def labeled_examples(dataset, cfg, seed=0, strong=None):
    """Infinite shuffled, weakly augmented labeled crops (unbatched); `strong` augments them further."""
    def prepare(example):
        example = prescale(example, cfg.image_scale)
        image, label = augment.weak_augment(example["image"], example["label"], cfg.crop_size,
                                            cfg.scale_range, cfg.base_size)
        if strong is not None:
            image, label = strong(image, label)
        return {"image": image, "label": label}

    ds = dataset.examples("labeled", shuffle_seed=seed, repeat=True)
    return ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=False)


def labeled_stream(dataset, cfg, seed=0, batch_size=None, strong=None):
    """Infinite shuffled batches of weakly augmented labeled crops."""
    ds = labeled_examples(dataset, cfg, seed, strong)
    return ds.batch(batch_size or cfg.batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def mixed_stream(streams, weights, cfg, seed=0, batch_size=None):
    """Batches whose examples are drawn from `streams` (unbatched) at rates `weights`.

    ST's student batches: labeled and pseudo-labeled crops shuffled together, the labeled
    images repeated to match the pseudo-labeled ones.
    """
    ds = tf.data.Dataset.sample_from_datasets(streams, weights=[float(w) for w in weights], seed=seed)
    return ds.batch(batch_size or cfg.batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def unlabeled_stream(dataset, cfg, seed=1, batch_size=None, strong=None, image_labels=False, image_classes=None,
                     strong_views=0, mix_boxes=False, p_mix=0.5):
    """Infinite shuffled batches of unlabeled crops (labels are never read, unless `image_labels`).

    With `strong` (an `augment.StrongAugment`), each crop also gets a strongly augmented
    view with the same geometry. PseudoSeg's image-level variant adds "classes", uint8 [B, C]:
    with `image_labels`, the unlabeled images' masks are read for that one purpose, the classes
    present in each crop (derived from the crop's mask, as the official code does); with
    `image_classes` (uint8 [N, C] in `dataset.keys("unlabeled")` order, e.g. from
    `dataset.read_image_labels`), each image's given classes, whatever its crop shows.

    With `strong_views=n` (UniMatch 2, FixMatch 1), the named views "image_strong_<i>" replace
    "image_strong": independent draws of `strong` on the same weak crop, so they share its geometry
    and its padding mask "valid" (`strong` then has no cutout: CutMix takes its place). With
    `mix_boxes`, each view gets a CutMix box "box_<i>" (`augment.random_box`: with probability `p_mix`,
    0.5 as the official sampler, 2-40 % of the crop; else empty), which the method fills from another
    image of the batch.
    """
    def prepare(example):
        example = prescale(example, cfg.image_scale)
        image = tf.cast(example["image"], tf.float32)
        if image_labels:
            # A 4th channel of ones marks the image through scale / pad / crop / flip: 0 where padded.
            marked = tf.concat([image, tf.ones_like(image[..., :1])], axis=-1)
            marked, label = augment.weak_augment(marked, example["label"], cfg.crop_size, cfg.scale_range,
                                                 cfg.base_size)
            image, valid = marked[..., :3], marked[..., 3] > 0.5
            pad = tf.where(valid, tf.constant(0, tf.uint8), tf.constant(IGNORE_LABEL, tf.uint8))
        else:
            image, pad = augment.weak_augment(image, tf.zeros(tf.shape(image)[:2], tf.uint8), cfg.crop_size,
                                              cfg.scale_range, cfg.base_size)
        out = {"image": image, "valid": tf.cast(pad != IGNORE_LABEL, tf.uint8)}
        if image_labels:
            out["classes"] = tf.cast(tf.reduce_max(tf.one_hot(tf.cast(label, tf.int32), dataset.num_classes,
                                                               dtype=tf.uint8), axis=[0, 1]), tf.uint8)
        elif image_classes is not None:
            out["classes"] = example["classes"]
        if strong is not None and not strong_views:
            image_s, pad_s = strong(image, pad)
            out.update(image_strong=image_s, valid_strong=tf.cast(pad_s != IGNORE_LABEL, tf.uint8))
        for i in range(1, strong_views + 1):
            out[f"image_strong_{i}"] = strong(image, pad)[0]
            if mix_boxes:
                out[f"box_{i}"] = tf.cast(augment.random_box(tf.shape(image)[0], tf.shape(image)[1], p=p_mix), tf.uint8)
        return out

    extras = {"classes": image_classes} if image_classes is not None else None
    ds = dataset.examples("unlabeled", shuffle_seed=seed, repeat=True, with_label=image_labels, extras=extras)
    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=False)
    return ds.batch(batch_size or cfg.batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def inference_stream(dataset, cfg, subset="unlabeled", batch_size=None):
    """Whole images of `subset` in key order, without labels, padded per batch, for pseudo-labelling.

    {"image": float32 [B, H, W, 3] (after `image_scale`), "valid": uint8 [B, H, W] (0 on padding),
    "size": int32 [B, 2] (each image's height and width on disk, before `image_scale`)}.
    """
    def prepare(example):
        size = tf.shape(example["image"])[:2]
        image = tf.cast(prescale(example, cfg.image_scale)["image"], tf.float32)
        return {"image": image, "valid": tf.ones(tf.shape(image)[:2], tf.uint8), "size": size}

    ds = dataset.examples(subset, with_label=False).map(prepare, num_parallel_calls=AUTOTUNE)
    ds = ds.padded_batch(batch_size or cfg.eval_batch_size,
                         padding_values={"image": 0.0, "valid": tf.constant(0, tf.uint8), "size": 0})
    return ds.prefetch(AUTOTUNE)


def eval_stream(dataset, cfg, subset="val", batch_size=None):
    """Whole images (no crop), in order, padded to the largest image of each batch."""
    def prepare(example):
        example = prescale(example, cfg.image_scale)
        return {"image": tf.cast(example["image"], tf.float32), "label": example["label"]}

    ds = dataset.examples(subset).map(prepare, num_parallel_calls=AUTOTUNE)
    ds = ds.padded_batch(batch_size or cfg.eval_batch_size,
                         padding_values={"image": 0.0, "label": tf.constant(IGNORE_LABEL, tf.uint8)})
    return ds.prefetch(AUTOTUNE)
