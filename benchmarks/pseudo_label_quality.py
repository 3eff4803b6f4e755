"""How good are a run's pseudo-labels? mIoU of each ST / ST++ labelling stage against the ground truth;
for a PseudoSeg run, of each source of its pseudo-labels (decoder, CAM, SGC, fused) on the unlabeled images.

Only for datasets whose unlabeled images do have labels on disk (e.g. CamVid's train split, where
the semi-supervised split hides them): the training never reads them, this script does.

    python benchmarks/pseudo_label_quality.py runs/stpp_camvid_1_8 [more run dirs] [--focus=fence]

PseudoSeg's sources are recomputed from the run's last checkpoint (segmenter, classification head
and SGC), on whole unlabeled images at the run's image_scale, with predicted image classes (or, for
an image-labels run, the classes in each mask).

With --confident=<tau> (any run, e.g. UniMatch / FixMatch): the pseudo-labels an online method
would train on, from the final segmenter on the whole unlabeled images: the share of each true
class's pixels predicted with confidence >= tau, and what those confident pixels are labelled as
(rows: true class, columns: pseudo-label, % of the row's confident pixels).

With --recalibrate_bn=<N> (any run): is the evaluation's BatchNorm what a method lost? The final
segmenter's val mIoU with its moving statistics, then with them re-estimated on N batches of weak
crops of the unlabeled images (training-mode passes, momentum 0.9; the weights unchanged).

With --images=<list> (ST / ST++), the labelling stages on the images of that list only, e.g. how the
teacher of an ST run labelled what ST++'s selection found unreliable:
`pseudo_label_quality.py <st run> --images=<stpp run>/2_select/unreliable.txt`. A list holds one
image a line, its path first (tab-separated, as the split files and ST++'s selection write them).

With --focus=<class>, also that class's recall and precision in the pseudo-labels, and its share of
pseudo-labeled pixels against its share of ground-truth pixels. With --students (ST / ST++), also
how well the teacher and each student learnt what they trained on: its predictions on its pseudo-labeled images
against their pseudo-labels and their true labels, and on the labeled images against theirs.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfsemiseg import metrics, runner  # noqa: E402
from tfsemiseg.data import io  # noqa: E402
from tfsemiseg.methods.st import read_pseudo_labels  # noqa: E402


def stage_quality(stage_dirs, dataset, images=None):
    """(images, mIoU, per-class IoU) of the pseudo-labels of `stage_dirs` taken together; with
    `images` (a set of image paths), of those images' pseudo-labels only."""
    pairs = [pair for pair in _pairs(stage_dirs) if images is None or pair[0][0] in images]
    miou = metrics.MeanIoU(dataset.num_classes)
    for (_, truth_path), pseudo_path in pairs:
        truth = io.read_label(truth_path, dataset.num_classes, dataset.ignore_value)
        pseudo = io.read_label(pseudo_path, dataset.num_classes)
        miou.update_state(truth[None], tf.one_hot(tf.cast(pseudo, tf.int32), dataset.num_classes)[None])
    return len(pairs), float(miou.result()), miou


def pseudoseg_quality(run_dir, cfg, dataset):
    """{source: MeanIoU} of PseudoSeg's pseudo-label sources on the unlabeled images."""
    from tfsemiseg.data import pipeline
    from tfsemiseg.methods.pseudoseg import PseudoSeg, present_classes

    model = PseudoSeg.create(cfg, dataset)
    model.load_weights(os.path.join(run_dir, "checkpoints", "ckpt.weights.h5"))
    results = {name: metrics.MeanIoU(dataset.num_classes) for name in ("decoder", "cam", "sgc", "fused")}

    def prepare(example):
        return pipeline.prescale(example, cfg.image_scale)

    for example in dataset.examples("unlabeled").map(prepare).batch(1):
        images, labels = tf.cast(example["image"], tf.float32), example["label"]
        given = present_classes(labels, dataset.num_classes, dataset.background) if cfg.image_labels else None
        for name, prediction in model.pseudo_label_views(images, given).items():
            if name in results:
                results[name].update_state(labels, tf.one_hot(prediction, dataset.num_classes))
    return results


def _pairs(stage_dirs):
    """(key, pseudo-label png) of the labelling stages `stage_dirs`, in their order."""
    return [pair for stage_dir in stage_dirs for pair in read_pseudo_labels(stage_dir)]


def student_fit(run_dir, cfg, dataset):
    """{stage: {view: MeanIoU}} of an ST / ST++ run's teacher and students, each on what it trained on:
    its predictions on the pseudo-labeled images against their pseudo-labels ("fit": how far it
    learnt its targets) and against their true labels, and on the labeled images against theirs.
    A student trains on the pseudo-labels of its stage's inputs (the plan's records)."""
    import keras

    from tfsemiseg.inference import predict_logits
    from tfsemiseg.methods import get_method

    results, c, plan = {}, dataset.num_classes, get_method(cfg.method).PLAN
    for stage in [s for s in plan if s.kind == "train"]:  # the teacher: labeled only
        student = stage.dirname
        if not os.path.isfile(os.path.join(run_dir, student, "final", "segmenter.keras")):
            continue  # a reused teacher (another run's)
        pairs = _pairs([os.path.join(run_dir, s.dirname) for s in plan if s.name in stage.inputs])
        segmenter = keras.saving.load_model(os.path.join(run_dir, student, "final", "segmenter.keras"))
        predict = tf.function(lambda x: tf.one_hot(tf.argmax(predict_logits(segmenter, x, cfg.image_scale), -1), c),
                              reduce_retracing=True)
        views = {name: metrics.MeanIoU(c) for name in
                 (("fit to pseudo-labels", "unlabeled vs truth") if pairs else ()) + ("labeled vs truth",)}
        for (image_path, truth_path), pseudo_path in pairs:
            prediction = predict(io.read_image(image_path)[None])
            views["fit to pseudo-labels"].update_state(io.read_label(pseudo_path, c)[None], prediction)
            views["unlabeled vs truth"].update_state(io.read_label(truth_path, c, dataset.ignore_value)[None], prediction)
        for image_path, truth_path in dataset.labeled:
            views["labeled vs truth"].update_state(io.read_label(truth_path, c, dataset.ignore_value)[None],
                                                   predict(io.read_image(image_path)[None]))
        results[student] = views
    return results


def confident_labels(run_dir, cfg, dataset, tau):
    """(confusion [C, C] of the pixels predicted with confidence >= tau, rows truth; pixels per true
    class) of the final segmenter on the unlabeled images."""
    import keras

    from tfsemiseg.data import pipeline
    from tfsemiseg.inference import predict_logits

    segmenter = keras.saving.load_model(os.path.join(run_dir, "final", "segmenter.keras"))
    c = dataset.num_classes
    cm, totals = np.zeros((c, c), np.int64), np.zeros(c, np.int64)
    for example in dataset.examples("unlabeled").map(lambda e: pipeline.prescale(e, cfg.image_scale)).batch(1):
        probs = tf.nn.softmax(tf.cast(predict_logits(segmenter, tf.cast(example["image"], tf.float32)), tf.float32))
        truth = tf.cast(example["label"], tf.int32).numpy().ravel()
        confident = (tf.reduce_max(probs, -1).numpy().ravel() >= tau) & (truth < c)
        prediction = tf.argmax(probs, -1).numpy().ravel()
        cm += np.bincount(truth[confident] * c + prediction[confident], minlength=c * c).reshape(c, c)
        totals += np.bincount(truth[truth < c], minlength=c)
    return cm, totals


def recalibrated_bn(run_dir, cfg, dataset, batches):
    """(val mIoU with the run's BatchNorm statistics, with them re-estimated on `batches` batches of
    weak unlabeled crops) of the final segmenter."""
    import keras

    from tfsemiseg.data import pipeline
    from tfsemiseg.methods.base import SegmentationMethod
    from tfsemiseg.training import evaluate_model

    _, segmenter = runner.load_run(run_dir)
    model = SegmentationMethod(segmenter, dataset.num_classes, eval_window=cfg.eval_window)
    model.compile()
    before = evaluate_model(model, dataset, cfg, "val")["miou"]
    for layer in segmenter._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    update = tf.function(lambda images: segmenter(images, training=True))
    for batch in pipeline.unlabeled_stream(dataset, cfg, seed=123).take(batches):
        update(batch["image"])
    model.miou.reset_state()
    return before, evaluate_model(model, dataset, cfg, "val")["miou"]


def focus_report(miou, index):
    cm = np.asarray(miou.total_cm, np.float64)  # rows: ground truth, columns: pseudo-label
    tp = cm[index, index]
    return (f"recall {100 * tp / cm[index].sum():.0f}, precision {100 * tp / cm[:, index].sum():.0f}, "
            f"pixels {100 * cm[:, index].sum() / cm.sum():.2f} % (truth {100 * cm[index].sum() / cm.sum():.2f} %)")


def read_image_list(path):
    """The image paths of a list file: the first tab-separated field of each line."""
    with open(path) as f:
        return {line.split("\t")[0].strip() for line in f if line.strip()}


def main(run_dirs, focus=None, students=False, tau=None, recalibrate_bn=None, images=None):
    if images is not None and not os.path.isfile(images):
        sys.exit(f"error: --images={images}: no such file (give a list such as <stpp run>/2_select/unreliable.txt)")
    only = None if images is None else read_image_list(images)
    for run_dir in run_dirs:
        if not os.path.isfile(os.path.join(run_dir, "metrics.json")):
            continue  # not a finished run (e.g. a log file matched by a glob)
        cfg, _ = runner.load_run(run_dir)
        dataset = runner.load_dataset(cfg)
        print(f"{run_dir}  ({cfg.method}, {cfg.dataset} {cfg.split})")
        if recalibrate_bn:
            before, after = recalibrated_bn(run_dir, cfg, dataset, recalibrate_bn)
            print(f"  val mIoU {100 * before:.2f} with the run's BatchNorm statistics, {100 * after:.2f} with them "
                  f"re-estimated on {recalibrate_bn} batches of weak unlabeled crops")
            continue
        if tau is not None:
            cm, totals = confident_labels(run_dir, cfg, dataset, tau)
            print(f"  confidence >= {tau}: {100 * cm.sum() / totals.sum():.0f} % of the pixels, "
                  f"{100 * np.trace(cm) / max(cm.sum(), 1):.1f} % of them right")
            print(f"  {'true class':>12s}  pixels  confident  labelled as (% of its confident pixels): "
                  + " ".join(f"{n[:6]:>6s}" for n in dataset.class_names))
            for i, name in enumerate(dataset.class_names):
                share, confident = 100 * totals[i] / totals.sum(), 100 * cm[i].sum() / max(totals[i], 1)
                row = 100 * cm[i] / max(cm[i].sum(), 1)
                print(f"  {name:>12s}  {share:4.0f} %  {confident:7.0f} %  {'':41s}" + " ".join(f"{v:6.0f}" for v in row))
            continue
        if cfg.method == "pseudoseg":
            print("  source     pseudo-label mIoU  per class")
            for name, miou in pseudoseg_quality(run_dir, cfg, dataset).items():
                classes = " ".join("-" if np.isnan(v) else f"{100 * v:.0f}" for v in miou.per_class_iou())
                print(f"  {name:9s}  {100 * float(miou.result()):17.2f}  {classes}")
                if focus:
                    print(f"  {'':9s}  {focus}: {focus_report(miou, dataset.class_names.index(focus))}")
            continue
        print("  stage                 images  pseudo-label mIoU  per class"
              + ("" if images is None else f"  (the images of {images} only)"))
        stages = [s for s in sorted(os.listdir(run_dir)) if os.path.isfile(os.path.join(run_dir, s, "labels.txt"))]
        rows = [(stage, [stage]) for stage in stages] + ([("all together", stages)] if len(stages) > 1 else [])
        for name, group in rows:
            count, value, miou = stage_quality([os.path.join(run_dir, s) for s in group], dataset, only)
            if not count:
                print(f"  {name:20s}  none of the images of {images}")
                continue
            classes = " ".join("-" if np.isnan(v) else f"{100 * v:.0f}" for v in miou.per_class_iou())
            print(f"  {name:20s}  {count:6d}  {100 * value:17.2f}  {classes}")
            if focus:
                print(f"  {'':20s}  {focus}: {focus_report(miou, dataset.class_names.index(focus))}")
        if students:
            print("  student               view                  mIoU  per class")
            for stage, views in student_fit(run_dir, cfg, dataset).items():
                for view, miou in views.items():
                    classes = " ".join("-" if np.isnan(v) else f"{100 * v:.0f}" for v in miou.per_class_iou())
                    print(f"  {stage:20s}  {view:20s}  {100 * float(miou.result()):5.2f}  {classes}")


if __name__ == "__main__":
    def value(name):
        given = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith(f"--{name}=")]
        return given[0] if given else None

    tau, batches = value("confident"), value("recalibrate_bn")
    main([a for a in sys.argv[1:] if not a.startswith("--")], value("focus"), "--students" in sys.argv,
         None if tau is None else float(tau), None if batches is None else int(batches), value("images"))
