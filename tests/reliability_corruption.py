"""Corruption trials: damage one file of a reference dataset, then read everything back.

A trial copies an intact reference dataset (:mod:`reliability_kit`), applies one damage
to one of its files, and reads the copy every way (:func:`reliability_kit.read_out`).
Damages are what storage does to bytes: a flipped bit, a byte overwritten, a zeroed run,
a cut-out run, a truncation, stray bytes appended, a deleted file; and, for the manifest,
a digit or a hexadecimal character replaced by another one, the kind of damage that
leaves the JSON valid and a name well-formed (uniform flips almost always break the
JSON). Every trial's reads must return the right bytes or raise a specific error naming
a file of the dataset.

splitdataloader 0.0.1 files carry no checksums, so some of their damage cannot be seen
by any reader: a changed payload byte, or an index entry moved onto another record of
the same length. Those trials are counted apart (``undetectable``) and not held to the
property; damage to the 0.0.1 structure (lengths, truncations, deletions, appended
bytes) is.
"""

from __future__ import annotations

import random
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from reference_model import to_fs
from reliability_kit import Expected, Reference, Tally, copy_dataset, read_out, stored_names

#: Damage to bytes: ``(data, rng) -> damaged data``.
Damage = Callable[[bytes, random.Random], bytes]


def _position(data: bytes, rng: random.Random) -> int:
    return rng.randrange(len(data))


def flip_bit(data: bytes, rng: random.Random) -> bytes:
    at = _position(data, rng)
    return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]


def overwrite_byte(data: bytes, rng: random.Random) -> bytes:
    at = _position(data, rng)
    return data[:at] + bytes([data[at] ^ rng.randrange(1, 256)]) + data[at + 1 :]


def zero_run(data: bytes, rng: random.Random) -> bytes:
    at = _position(data, rng)
    length = rng.randrange(1, 65)
    return data[:at] + bytes(min(length, len(data) - at)) + data[at + length :]


def cut_run(data: bytes, rng: random.Random) -> bytes:
    at = _position(data, rng)
    return data[:at] + data[at + rng.randrange(1, 65) :]


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: _position(data, rng)]


def append_garbage(data: bytes, rng: random.Random) -> bytes:
    return data + rng.randbytes(rng.randrange(1, 65))


def _replace_matching(pattern: re.Pattern[bytes], alphabet: bytes) -> Damage:
    def damage(data: bytes, rng: random.Random) -> bytes:
        spots = [m.start() for m in pattern.finditer(data)]
        if not spots:
            return overwrite_byte(data, rng)
        at = rng.choice(spots)
        choices = [c for c in alphabet if c != data[at]]
        return data[:at] + bytes([rng.choice(choices)]) + data[at + 1 :]

    return damage


#: A decimal digit replaced by another: the JSON stays valid, a number changes.
replace_digit = _replace_matching(re.compile(rb"[0-9]"), b"0123456789")
#: A hexadecimal character replaced by another: names and ids stay well-formed.
replace_hex = _replace_matching(re.compile(rb"[0-9a-f]"), b"0123456789abcdef")

#: Damage to a file's bytes, by name.
BYTE_DAMAGES: dict[str, Damage] = {
    "flip-bit": flip_bit,
    "overwrite-byte": overwrite_byte,
    "zero-run": zero_run,
    "cut-run": cut_run,
    "truncate": truncate,
    "append": append_garbage,
}
#: Damages only applied to the manifest.
MANIFEST_DAMAGES: dict[str, Damage] = {
    "replace-digit": replace_digit,
    "replace-hex": replace_hex,
}
DELETE = "delete"


#: File kinds by name: exact names, then name prefixes.
_KINDS = {
    "manifest.json": "manifest",
    "index.dat": "0.0.1 index",
    "index/": "index part",
    "data/": "segment",
    "meta/": "codec resource",
    "bin": "0.0.1 bin",
}


def file_kind(name: str) -> str:
    """The kind of a dataset file, from its name."""
    for start, kind in _KINDS.items():
        if name == start or (start.endswith(("/", "bin")) and name.startswith(start)):
            return kind
    return "other"


@dataclass
class CorruptionStats:
    """What a series of trials did and found."""

    trials: int = 0
    #: Trials in which at least one read raised a specific error.
    caught: int = 0
    #: Trials in which every read returned the right bytes (the damage was harmless).
    harmless: int = 0
    #: 0.0.1 trials whose damage no reader can see (no checksums), not held to the property.
    undetectable: int = 0
    #: Trials per (file kind, damage).
    by_kind: dict[tuple[str, str], int] = field(default_factory=dict)
    reads: Tally = field(default_factory=Tally)

    @property
    def failures(self) -> list[str]:
        return self.reads.failures

    def add(self, other: CorruptionStats) -> None:
        self.trials += other.trials
        self.caught += other.caught
        self.harmless += other.harmless
        self.undetectable += other.undetectable
        for key, count in other.by_kind.items():
            self.by_kind[key] = self.by_kind.get(key, 0) + count
        self.reads.add(other.reads)


def legacy_contents(url: str) -> tuple[Expected, Expected, Expected]:
    """What the files of a (damaged) 0.0.1 dataset hold, by its documented layout alone
    (docs/format.md §8): (records, bin-wise order, the records of a shuffled pass).

    Record ``i`` is the packet that entry ``i`` of ``index.dat`` points at, or ``None``
    where there is none (no such file, past its end, a length prefix that disagrees). A
    bin file holds its indexed packets back to back from offset 0, or it is damaged. The
    bin-wise order is the packets by position, bin files in name order, up to a ``None``
    at the first damaged bin (or at the start when ``index.dat`` names a missing bin
    file). A shuffled pass may give the packets of the undamaged bins in any order, and
    must end in an error (the ``None``) if any bin is damaged.
    """
    fs, root = to_fs(url)
    names = stored_names(url)
    if "index.dat" not in names:
        return [], [], []
    index = fs.cat_file(f"{root}/index.dat")
    bins = {
        int(name[3:11]): fs.cat_file(f"{root}/{name}")
        for name in names
        if re.fullmatch(r"bin\d{8}\.dat", name)
    }
    triplets = [struct.unpack_from("<III", index, 12 * k) for k in range(len(index) // 12)]

    def packet(bin_id: int, position: int, length: int) -> bytes | None:
        data = bins.get(bin_id)
        if data is None or position + 4 + length > len(data):
            return None
        if struct.unpack_from("<I", data, position)[0] != length:
            return None
        return data[position + 4 : position + 4 + length]

    records: Expected = [packet(*triplet) for triplet in triplets]
    if any(bin_id not in bins for bin_id, _, _ in triplets):
        return records, [None], [None]
    per_bin: list[list[bytes] | None] = []
    for bin_id in sorted(bins):
        packets: list[bytes] | None = []
        at = 0
        for position, length in sorted((p, n) for b, p, n in triplets if b == bin_id):
            found = packet(bin_id, position, length) if position == at else None
            if found is None or packets is None:
                packets = None
                break
            packets.append(found)
            at = position + 4 + length
        per_bin.append(packets)
    binwise: Expected = []
    for packets in per_bin:
        if packets is None:
            binwise.append(None)
            break
        binwise.extend(packets)
    anywhere: Expected = [p for packets in per_bin if packets is not None for p in packets]
    if any(packets is None for packets in per_bin):
        anywhere.append(None)
    return records, binwise, anywhere


def corrupt_once(
    reference: Reference,
    target: str,
    rng: random.Random,
    name: str | None = None,
    damage: str | None = None,
) -> CorruptionStats:
    """One trial: copy ``reference`` to ``target``, damage one file, read it every way.

    ``name`` and ``damage`` pick the file and the damage; by default both are random.
    """
    copy_dataset(reference.url, target)
    names = stored_names(target)
    name = name or rng.choice(names)
    kind = file_kind(name)
    choices = [*BYTE_DAMAGES, DELETE] + (list(MANIFEST_DAMAGES) if kind == "manifest" else [])
    damage = damage or rng.choice(choices)
    fs, root = to_fs(target)
    path = f"{root}/{name}"
    before = fs.cat_file(path)
    if damage == DELETE:
        fs.rm_file(path)
    else:
        function = BYTE_DAMAGES.get(damage) or MANIFEST_DAMAGES[damage]
        fs.rm_file(path)
        fs.pipe_file(path, function(before, rng) if before else append_garbage(before, rng))
    stats = CorruptionStats(trials=1, by_kind={(kind, damage): 1})
    context = f"{reference.name}: {damage} of {name}"
    expected: tuple[Expected, Expected, Expected] | None = None
    if reference.legacy:
        # 0.0.1 files carry no checksums: a reader can only be held to what they hold.
        records, binwise, anywhere = legacy_contents(target)
        expected = (records, binwise, anywhere)
        if len(records) != len(reference.records) or any(
            got is not None and got != want for got, want in zip(records, reference.records)
        ):
            stats.undetectable = 1
    tally = read_out(reference, target, context, expected, shuffled_known=not reference.legacy)
    if tally.errors:
        stats.caught = 1
    elif not tally.failures and not stats.undetectable:
        stats.harmless = 1
    stats.reads = tally
    return stats


def run_trials(
    reference: Reference,
    scratch_root: str,
    trials: int,
    seed: int,
    pick: Callable[[random.Random, list[str]], tuple[str, str]] | None = None,
) -> CorruptionStats:
    """``trials`` random trials on copies of ``reference`` under ``scratch_root``.

    ``pick(rng, names)`` chooses (file name, damage) when given; by default both are random.
    """
    rng = random.Random(seed)
    names = stored_names(reference.url)
    stats = CorruptionStats()
    for number in range(trials):
        target = f"{scratch_root.rstrip('/')}/trial-{seed}-{number}"
        chosen = pick(rng, names) if pick is not None else (None, None)
        stats.add(corrupt_once(reference, target, rng, *chosen))
        fs, root = to_fs(target)
        fs.rm(root, recursive=True)
    return stats


def every_file_and_damage(rng: random.Random, names: list[str]) -> tuple[str, str]:
    """A picker that spreads trials evenly over file kinds, then damages."""
    by_kind: dict[str, list[str]] = {}
    for name in names:
        by_kind.setdefault(file_kind(name), []).append(name)
    kind = rng.choice(sorted(by_kind))
    name = rng.choice(by_kind[kind])
    damages = [*BYTE_DAMAGES, DELETE] + (list(MANIFEST_DAMAGES) * 3 if kind == "manifest" else [])
    return name, rng.choice(damages)
