"""Image data sets held in memory as uint8 tensors, and batch transforms for them.

``load_dataset(name)`` returns the train and test splits of ``embedded`` (a small
Fashion-MNIST subset shipped with the package), ``fashion-mnist``, ``cifar10``,
``cifar100`` or ``imagefolder:PATH``; ``BatchTransform`` turns a batch into model input.
"""

from paraformer.data.base import DataSplits, ImageDataset
from paraformer.data.datasets import DATASET_NAMES, default_data_dir, load_dataset
from paraformer.data.splits import check_classes, limit_dataset, select_classes, train_val_split
from paraformer.data.transforms import BatchTransform, channel_stats, transform_for

__all__ = [
    "DATASET_NAMES",
    "BatchTransform",
    "DataSplits",
    "ImageDataset",
    "channel_stats",
    "check_classes",
    "default_data_dir",
    "limit_dataset",
    "load_dataset",
    "select_classes",
    "train_val_split",
    "transform_for",
]
