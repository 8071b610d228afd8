""" Converters from the official CUB-200-2011, Stanford Cars and FGVC-Aircraft downloads to timm's folder
layout (``root/train/<class>/``, ``root/val/<class>/``): ``timm-camaug prepare`` or :func:`prepare_dataset`. """
from .common import BuildResult, Listing, PrepareError, Sample, class_folder_names, safe_name
from .prepare import DATASETS, prepare_dataset, read_listing

__all__ = [
    'DATASETS', 'prepare_dataset', 'read_listing', 'PrepareError', 'Listing', 'Sample', 'BuildResult',
    'class_folder_names', 'safe_name',
]
