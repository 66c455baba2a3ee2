"""Whether this job may write to an output, decided before it takes the lease.

A safe target (:func:`check_safe_target`): not the input, not around it, not inside it,
and holding nothing the pipeline did not write, so predictions never mix with a user's
files and ``--overwrite`` never reaches them. A committed output (:func:`committed_here`):
this configuration's own commit is left as it is (a scheduler's retry after success);
another's is refused. What an unfinished run may resume is :func:`pipeline.outputs.run_state.check_can_start`,
decided under the lease.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline.errors import ConfigError, OutputExistsError
from pipeline.outputs.layout import FOREIGN_EXAMPLES, is_own
from pipeline.outputs.run_state import read_run_state

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.config import Config
    from pipeline.outputs.layout import OutputLocation


def check_before_lease(
    location: OutputLocation, config: Config, weights_sha256: Callable[[], str], *, overwrite: bool
) -> dict[str, Any] | None:
    """Refuse an unsafe output; return the manifest of this config's commit there (nothing to do), if any.

    ``weights_sha256`` (the weights read once per run) is called only when a commit is there:
    "this configuration" includes what the weights are, so a retry with other bytes at the same
    path is refused.
    """
    check_safe_target(location, config.input.uri)
    if overwrite:
        return None
    return committed_here(location, config, weights_sha256, strict=config.output.if_committed == "fail")


def _same_place_forms(uri: str) -> set[str]:
    """The forms of a URI naming one place: ``s3a://`` as ``s3://``; a local path, also symlinks resolved."""
    normal = storage.normalise(uri)
    if storage.is_remote(normal):
        scheme, rest = normal.split("://", 1)
        return {f"{'s3' if scheme in storage.S3_SCHEMES else scheme}://{rest.rstrip('/')}"}
    return {normal, os.path.realpath(normal)}


def _within(inner: set[str], outer: set[str]) -> bool:
    """Whether some form of ``inner`` is ``outer`` or below it, by whole path segments."""
    return any(i == o or i.startswith(o.rstrip("/") + "/") for i in inner for o in outer)


def check_safe_target(location: OutputLocation, input_uri: str) -> None:
    """Refuse an output that is the input, holds it, is inside it, or holds files this pipeline did not write.

    Raised as a config error on ``output.uri`` before anything is written or deleted.
    An output inside a listed input would be listed with it by the next run (its parts
    read as images); an input inside the output mixes predictions with images, and
    ``--overwrite`` could reach them. An empty or missing output, or one holding only
    this pipeline's files, is fine.
    """
    source, out = storage.normalise(input_uri), location.uri
    sources, outs = _same_place_forms(input_uri), _same_place_forms(out)
    if _within(sources, outs):
        raise ConfigError(
            "output.uri",
            out,
            f"it holds the input ({source}); writing there would mix predictions with the images "
            "and --overwrite could delete them: choose a folder or prefix outside the input",
        )
    if _within(outs, sources):
        raise ConfigError(
            "output.uri",
            out,
            f"it is inside the input ({source}); the next run over that input would list the "
            "predictions as inputs: choose a folder or prefix outside the input",
        )
    foreign = [name for name in location.list_files() if not is_own(name)]
    if foreign:
        examples = ", ".join(foreign[:FOREIGN_EXAMPLES]) + (
            ", ..." if len(foreign) > FOREIGN_EXAMPLES else ""
        )
        raise ConfigError(
            "output.uri",
            out,
            f"it holds {len(foreign)} file(s) this pipeline did not write ({examples}); choose an "
            "empty folder or prefix (or one this pipeline wrote): nothing there was changed",
        )


def committed_here(
    location: OutputLocation, config: Config, weights_sha256: Callable[[], str], *, strict: bool
) -> dict[str, Any] | None:
    """The manifest of the run committed here with this configuration, or None if none is committed.

    Read before the lease is taken, so a rerun of a committed output writes nothing there.
    A run committed with another configuration (or any, when ``strict``) is refused (exit 3).
    The same configuration is the same settings and the same weights' bytes: the hash of both,
    or, for a run committed before the hash covered the bytes, the hash of the settings and the
    checksum its manifest records.
    """
    committed = read_run_state(location).committed
    if committed is None:
        return None
    digest = weights_sha256()
    recorded = committed.get("config_hash")
    same = recorded == config.config_hash(digest) or (
        recorded == config.config_hash() and (committed.get("model") or {}).get("sha256") == digest
    )
    if same and not strict:
        return committed
    what = "this configuration" if same else "a different configuration"
    raise OutputExistsError(
        f"output {location.uri} already holds run {committed.get('run_id')!r}, committed "
        f"{committed.get('committed_at') or committed.get('finished_at')} with {what}"
        + ("; --strict (output.if_committed: fail) refuses it" if same else "")
        + ". Nothing was written: pass --overwrite to redo it, or choose another output.uri"
    )
