"""A hypothesis state machine: random sequences of writes, checked against a list model.

Rules append, replace (``start_clean``), stream through a ``SplitWriter`` with several
commits, abort writers and failing generators, and reopen the loader. After every step
the dataset must hold exactly the model's records, by index and bin by bin. Records carry
a unique serial number so that shuffled bin orders can be checked structurally.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from conftest import S3_MAX_EXAMPLES
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from reference_model import CommitModel, DatasetModel, check_binwise_structure, read_all, tag

from splitdataloader import SplitDataLoader, SplitWriter, write_split_data
from splitdataloader.errors import DatasetNotFoundError

DEFAULT_BINS = 256

payload_lists = st.lists(st.binary(max_size=24), max_size=12)
splits_or_none = st.none() | st.integers(min_value=1, max_value=9)
seeds = st.none() | st.integers(min_value=0, max_value=2**32 - 1)


class InjectedError(Exception):
    """Raised on purpose inside a writer block or a data source."""


class DatasetMachine(RuleBasedStateMachine):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.model = DatasetModel()
        self.exists = False
        self.serial = 0
        self.loader: SplitDataLoader | None = None

    # ------------------------------------------------------------ helpers

    def records_from(self, payloads: list[bytes]) -> list[bytes]:
        records = [tag(self.serial + k, payload) for k, payload in enumerate(payloads)]
        self.serial += len(payloads)
        return records

    def bins_for(self, requested: int | None) -> int:
        """The bin count a writer uses: the requested one, else the dataset's, else 256."""
        if requested is not None:
            return requested
        if self.exists:
            with SplitDataLoader(self.url) as loader:
                return int(loader.num_bins)
        return DEFAULT_BINS

    def forget_loader(self) -> None:
        # After a write the open loader's view is unspecified; later checks reopen.
        if self.loader is not None:
            self.loader.close()
            self.loader = None

    # ------------------------------------------------------------ rules

    @rule(payloads=payload_lists, splits=splits_or_none, shuffle=st.booleans(), seed=seeds)
    def append(
        self, payloads: list[bytes], splits: int | None, shuffle: bool, seed: int | None
    ) -> None:
        self.forget_loader()
        records = self.records_from(payloads)
        bins = self.bins_for(splits)
        written = write_split_data(
            self.url, iter(records), splits=splits, shuffle=shuffle, seed=seed, durable=False
        )
        assert written == len(records)
        if records:
            self.model.commits.append(CommitModel(tuple(records), bins, shuffled=shuffle))
        self.exists = True

    # An explicit bin count: which default applies when replacing is left open.
    @rule(payloads=payload_lists, splits=st.integers(1, 9), shuffle=st.booleans(), seed=seeds)
    def replace(self, payloads: list[bytes], splits: int, shuffle: bool, seed: int | None) -> None:
        self.forget_loader()
        records = self.records_from(payloads)
        bins = splits
        written = write_split_data(
            self.url, records, splits=splits, shuffle=shuffle, start_clean=True, seed=seed
        )
        assert written == len(records)
        self.model = DatasetModel()
        if records:
            self.model.commits.append(CommitModel(tuple(records), bins, shuffled=shuffle))
        self.exists = True

    @rule(
        batches=st.lists(payload_lists, min_size=1, max_size=4),
        bins=splits_or_none,
        shuffle=st.booleans(),
        seed=seeds,
        one_by_one=st.booleans(),
    )
    def writer_session(
        self,
        batches: list[list[bytes]],
        bins: int | None,
        shuffle: bool,
        seed: int | None,
        one_by_one: bool,
    ) -> None:
        self.forget_loader()
        used = self.bins_for(bins)
        before = len(self.model.records)
        session = 0
        with SplitWriter(self.url, bins=bins, shuffle=shuffle, seed=seed) as writer:
            assert writer.bins == used
            for number, payloads in enumerate(batches):
                records = self.records_from(payloads)
                if one_by_one:
                    for record in records:
                        assert writer.write(record) == before + session
                        session += 1
                else:
                    assert writer.write_many(iter(records)) == len(records)
                    session += len(records)
                if records:
                    start = (session - len(records)) % used
                    self.model.commits.append(
                        CommitModel(tuple(records), used, start=start, shuffled=shuffle)
                    )
                if number < len(batches) - 1:
                    assert writer.commit() == len(self.model.records)
                    self.exists = True
        self.exists = True

    @rule(
        kept=payload_lists,
        lost=payload_lists,
        bins=splits_or_none,
        commit_first=st.booleans(),
    )
    def aborted_writer(
        self, kept: list[bytes], lost: list[bytes], bins: int | None, commit_first: bool
    ) -> None:
        self.forget_loader()
        used = self.bins_for(bins)
        kept_records = self.records_from(kept) if commit_first else []
        lost_records = self.records_from(lost)

        def fail_inside_block() -> None:
            with SplitWriter(self.url, bins=bins) as writer:
                if commit_first:
                    writer.write_many(kept_records)
                    assert writer.commit() == len(self.model.records) + len(kept_records)
                    if kept_records:
                        self.model.commits.append(CommitModel(tuple(kept_records), used))
                    self.exists = True
                writer.write_many(lost_records)
                raise InjectedError

        with pytest.raises(InjectedError):
            fail_inside_block()

    @rule(payloads=payload_lists, splits=splits_or_none)
    def failing_source(self, payloads: list[bytes], splits: int | None) -> None:
        self.forget_loader()
        records = self.records_from(payloads)

        def source() -> Iterator[bytes]:
            yield from records
            raise InjectedError

        with pytest.raises(InjectedError):
            write_split_data(self.url, source(), splits=splits)

    @precondition(lambda self: self.exists)
    @rule()
    def reopen(self) -> None:
        self.forget_loader()
        self.loader = SplitDataLoader(self.url)

    # ------------------------------------------------------------ checks

    @invariant()
    def matches_model(self) -> None:
        if not self.exists:
            with pytest.raises(DatasetNotFoundError):
                SplitDataLoader(self.url)
            return
        if self.loader is not None:
            self.check(self.loader)
        else:
            with SplitDataLoader(self.url) as loader:
                self.check(loader)

    def check(self, loader: SplitDataLoader) -> None:
        expected = self.model.records
        assert len(loader) == len(expected)
        assert read_all(loader) == expected
        if expected:
            assert loader[-1] == expected[-1]
            backwards = list(range(len(expected) - 1, -1, -2))
            assert loader.get_many(backwards) == [expected[i] for i in backwards]
            assert loader[1::3] == expected[1::3]
        num_bins = loader.num_bins
        assert num_bins >= self.model.min_bins()
        binwise = list(loader.iterate_binwise())
        if self.model.shuffled:
            check_binwise_structure(binwise, self.model, num_bins)
        else:
            assert binwise == self.model.binwise(num_bins)
        assert sorted(loader.iterate_binwise(shuffle=True, seed=11)) == sorted(expected)

    def teardown(self) -> None:
        self.forget_loader()


def test_dataset_behaves_like_a_list(fresh_url: Callable[[], str], backend: str) -> None:
    # Every step on the S3 server costs tens of requests: fewer and shorter runs there.
    on_s3 = backend == "s3"
    runs = {"max_examples": S3_MAX_EXAMPLES} if on_s3 else {}
    run_state_machine_as_test(
        lambda: DatasetMachine(fresh_url()),
        settings=settings(stateful_step_count=8 if on_s3 else 12, **runs),
    )
