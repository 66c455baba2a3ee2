"""WebDataset shards: tar members grouped into records by their shared key."""

from __future__ import annotations

import posixpath
import tarfile
from typing import TYPE_CHECKING

import pyarrow as pa

from pipeline import storage
from pipeline.inputs.shards import ReadSpec, Shard, ShardDataError, block, shard_name
from pipeline.schema import FailureReason

if TYPE_CHECKING:
    from collections.abc import Iterator


WEBDATASET_TEXT_MEMBERS = ("json", "cls", "txt")  # carried as text columns named by extension


def _member_key(member_name: str) -> tuple[str, str]:
    """WebDataset's split of a member name: the key (path without extensions), the extension."""
    folder, base = posixpath.split(member_name)
    stem, _, extension = base.partition(".")
    return posixpath.join(folder, stem), extension.lower()


def _unsafe(member_name: str) -> bool:
    return member_name.startswith("/") or ".." in member_name.split("/")


Record = tuple[str, dict[str, bytes], bool]  # WebDataset key, members by extension, unsafe name seen


def _tar_records(archive: tarfile.TarFile) -> Iterator[Record]:
    """The archive's records in order: consecutive members sharing a key."""
    current: Record | None = None
    for member in archive:
        if not member.isfile():
            continue
        key, extension = _member_key(member.name)
        if current is None or current[0] != key:
            if current is not None:
                yield current
            current = (key, {}, False)
        if _unsafe(member.name):  # never extracted; the record fails with reason unsafe_member
            current = (key, current[1], True)
            continue
        data = archive.extractfile(member)
        current[1][extension] = data.read() if data is not None else b""
    if current is not None:
        yield current


def read_webdataset(shard: Shard, spec: ReadSpec, counted: list[int]) -> Iterator[pa.Table]:
    """Records are consecutive members sharing a key; the image is the member of an ``input.extensions``.

    A tar cut short yields the records before the cut, then fails the shard (``truncated``).
    """
    fs = storage.fsspec_filesystem(shard.uri, spec.storage)
    name = shard_name(shard.uri, spec.root)
    carried = list(spec.carried.names) if spec.carried is not None else None
    pending: list[Record] = []
    with fs.open(storage.fs_path(shard.uri), "rb") as handle:
        try:
            archive = tarfile.open(fileobj=handle, mode="r|")  # noqa: SIM115  # streamed, closed below
        except tarfile.TarError as exc:
            raise ShardDataError("not_a_tar", storage.describe(exc)) from exc
        failure: ShardDataError | None = None
        try:
            for record in _tar_records(archive):
                pending.append(record)
                if len(pending) >= spec.rows_per_block:
                    counted[0] += len(pending)
                    yield _tar_block(shard, spec, name, pending, carried)
                    pending = []
        except tarfile.TarError as exc:
            failure = ShardDataError("truncated", storage.describe(exc))
        finally:
            archive.close()
    if pending:
        counted[0] += len(pending)
        yield _tar_block(shard, spec, name, pending, carried)
    if failure is not None:
        raise failure


def _tar_block(
    shard: Shard,
    spec: ReadSpec,
    name: str,
    records: list[tuple[str, dict[str, bytes], bool]],
    carried: list[str] | None,
) -> pa.Table:
    images: list[bytes | None] = []
    problems: list[tuple[str, str] | None] = []
    suffixes = [extension.lstrip(".") for extension in spec.extensions]
    for key, members, unsafe in records:
        image = next((members[ext] for ext in suffixes if ext in members), None)
        images.append(None if unsafe else image)
        if unsafe:
            problems.append(
                (FailureReason.UNSAFE_MEMBER.value, f"a member of {key!r} is named with '..' or '/'")
            )
        elif image is None:
            found = ", ".join(sorted(members)) or "none"
            problems.append(
                (FailureReason.NO_IMAGE.value, f"no member of input.extensions (members: {found})")
            )
        else:
            problems.append(None)
    values = None
    if carried is not None:
        values = [tuple(_text(members.get(column)) for column in carried) for _, members, _ in records]
    keys = [f"{name}#{key}" for key, _, _ in records]
    locators = [key for key, _, _ in records]
    return block(shard, keys, locators, pa.array(images, pa.large_binary()), problems, values)


def _text(data: bytes | None) -> str | None:
    return data.decode("utf-8", errors="replace") if data is not None else None
