"""splitdataloader: byte-record datasets in bins, over any fsspec filesystem."""

from . import errors
from .convert import convert_legacy
from .loader import SplitDataLoader
from .prefetch import MpQItr, WorkerInfo, worker_info
from .writer import SplitWriter, write_split_data

__all__ = [
    "MpQItr",
    "SplitDataLoader",
    "SplitWriter",
    "WorkerInfo",
    "convert_legacy",
    "errors",
    "worker_info",
    "write_split_data",
]
__version__ = "0.1.0.dev0"
