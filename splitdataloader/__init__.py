"""splitdataloader: byte-record datasets in bins, over any fsspec filesystem."""

from . import errors
from .convert import convert_legacy
from .dask import write_dask
from .join import discard_parts, join_parts, list_parts
from .loader import SplitDataLoader
from .parts import PartWriter
from .prefetch import MpQItr, WorkerInfo, worker_info
from .repair import RepairReport, repair
from .samples import decode_sample
from .verify import VerifyReport, verify
from .writer import SplitWriter, write_split_data

__all__ = [
    "MpQItr",
    "PartWriter",
    "RepairReport",
    "SplitDataLoader",
    "SplitWriter",
    "VerifyReport",
    "WorkerInfo",
    "convert_legacy",
    "decode_sample",
    "discard_parts",
    "errors",
    "join_parts",
    "list_parts",
    "repair",
    "verify",
    "worker_info",
    "write_dask",
    "write_split_data",
]
__version__ = "0.1.0.dev0"
