"""Write and read a dataset with the real splitdataloader 0.0.1, in a process of its own.

Usage: ``python legacy_driver.py PACKAGE_DIR SPEC_JSON OUT_JSON``

``PACKAGE_DIR`` holds 0.0.1 as installed by ``pip install --target``. Its module is
loaded by file path, never by the name ``splitdataloader`` (which would clash with the
package under test, and 0.0.1's ``__init__`` needs Python 3.11 for ``typing.Self``).

``SPEC_JSON``: ``{"target": folder, "seed": int, "writes": [{"records": [hex, ...],
"splits": int, "shuffle": bool, "start_clean": bool}, ...]}``; the seed seeds the
``random`` module, which 0.0.1 uses for ``shuffle``.

``OUT_JSON`` receives what 0.0.1's own ``SplitDataLoader`` returns: ``len``, every
``loader[i]`` and ``iterate_binwise()`` (no shuffle), as hex strings.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path


def load_legacy_module(package_dir: Path) -> object:
    path = package_dir / "splitdataloader" / "data_writer_and_loader.py"
    spec = importlib.util.spec_from_file_location("splitdataloader_001_writer_and_loader", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    package_dir, spec_path, out_path = (Path(arg) for arg in sys.argv[1:4])
    legacy = load_legacy_module(package_dir)
    spec = json.loads(spec_path.read_text())
    random.seed(spec["seed"])
    target = spec["target"]
    for write in spec["writes"]:
        legacy.write_split_data(  # type: ignore[attr-defined]
            target,
            [bytes.fromhex(item) for item in write["records"]],
            splits=write["splits"],
            shuffle=write["shuffle"],
            start_clean=write["start_clean"],
        )
    loader = legacy.SplitDataLoader(target)  # type: ignore[attr-defined]
    count = len(loader)
    result = {
        "len": count,
        "items": [loader[i].hex() for i in range(count)],
        "binwise": [item.hex() for item in loader.iterate_binwise()],
    }
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
