""" The names the dataset converters share, gathered from where they live: ``listing`` (what a reader
returns, class folder names, annotation-file readers and cross-checks), ``tree`` (building the tree, the
destination check), ``manifest`` (what prepare wrote, for ``--overwrite``) and ``summary``. Kept so that
``from timm_camaug.datasets.common import ...`` keeps working.
"""
from ..console import CLASS_MAP_FILE
from .listing import (SPLITS, Listing, PrepareError, Sample, check_sources, class_folder_names, id_ranges,
                      list_names, list_paths, lists_lacking_entries, read_id_value_file, read_text, safe_name)
from .manifest import MANIFEST_FILE, WRITTEN_BY
from .summary import format_summary, summary_warnings
from .tree import (CLASSES_FILE, LINK_MODES, VERIFY_MODES, BuildResult, build_tree, check_destination,
                   prepare_tree_problem)

__all__ = [
    'PrepareError', 'Sample', 'Listing', 'BuildResult', 'SPLITS', 'LINK_MODES', 'VERIFY_MODES',
    'CLASS_MAP_FILE', 'CLASSES_FILE', 'MANIFEST_FILE', 'WRITTEN_BY', 'safe_name', 'class_folder_names',
    'read_text', 'read_id_value_file', 'id_ranges', 'list_names', 'list_paths', 'lists_lacking_entries',
    'check_sources', 'prepare_tree_problem', 'check_destination', 'build_tree', 'format_summary',
    'summary_warnings',
]
