"""Coverage-guided fuzzing of the manifest, index and frame parsers with atheris.

    pip install -e ".[fuzz]"                     # atheris
    python tests/fuzz_parsers.py manifest -max_total_time=60
    python tests/fuzz_parsers.py index -runs=200000
    python tests/fuzz_parsers.py frames -max_total_time=60

The first argument names the target (:mod:`fuzz_targets`); the rest go to libFuzzer. The
fuzzer starts from ``fuzz_corpus/<target>/`` (it grows its working corpus in a temporary
folder) and writes an input that breaks a target's contract there (``crash-*``): keep
it, with a name that says what it is, and the corpus replay in
``test_reliability_hostile.py`` turns it into a regression test. Not part of the test
run: atheris does not install everywhere.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

with atheris.instrument_imports():
    import fuzz_targets


def main() -> None:
    target = sys.argv[1]
    run = fuzz_targets.TARGETS[target]
    kept = HERE / "fuzz_corpus" / target
    # libFuzzer adds the inputs it finds interesting to the first folder: a scratch one,
    # so that the kept corpus only ever gains the failing inputs (the artifacts).
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as scratch:
        arguments = [sys.argv[0], *sys.argv[2:], f"-artifact_prefix={kept}/", scratch, str(kept)]
        atheris.Setup(arguments, run)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
