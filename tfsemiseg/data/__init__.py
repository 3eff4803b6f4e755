"""Datasets, splits, augmentation and tf.data pipelines."""

from tfsemiseg.data.augment import StrongAugment, cutout, weak_augment
from tfsemiseg.data.datasets import SegDataset, build_dataset, resolve_split
from tfsemiseg.data.io import IGNORE_LABEL, DataError, explain_data_errors
from tfsemiseg.data.pipeline import eval_stream, labeled_stream, unlabeled_stream
