"""``pipeline demo``: a sample data set, run through the job locally with random weights.

``--format files`` (the default) writes loose image files; ``parquet`` and ``webdataset``
pack the same images into three shards of that format (:mod:`pipeline.cli.sample_shards`), so
the run reads images inside shards, carrying a column of theirs into the output.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

#: Per format: the folder the job reads, and the settings it adds.
CARRIED = {
    "files": [],
    "parquet": ["input.passthrough_columns=[name]"],
    "webdataset": ["input.passthrough_columns=[json]"],
}


def demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pipeline demo``."""
    parser.add_argument("--images", type=int, default=300, help="number of good sample images")
    parser.add_argument("--workdir", default="demo-output", help="where the data and output go")
    parser.add_argument("--model", default="resnet18", help="torchvision architecture")
    parser.add_argument(
        "--format",
        choices=tuple(CARRIED),
        default="files",
        help="loose files, or the same images inside Parquet or WebDataset shards",
    )


def run_demo(args: argparse.Namespace) -> int:
    """Make the sample (once per work folder and format), run the job on it, print the summary."""
    from pipeline.cli import sample_shards, samples
    from pipeline.config import load_config
    from pipeline.ops import logrelay, logs
    from pipeline.run.job import run_job

    workdir = Path(args.workdir).resolve()
    images = workdir / "images"
    if not images.exists():
        print(f"making {args.images} sample images (and 3 broken files) under {images} ...")  # noqa: T201
        samples.make_images(images, args.images)
    data = images
    if args.format != "files":
        data = workdir / args.format
        if not data.exists():
            files = sorted(path for path in images.rglob("*") if path.is_file())
            pack = (
                sample_shards.parquet_shards if args.format == "parquet" else sample_shards.webdataset_shards
            )
            print(f"packing them into 3 {args.format} shards under {data} ...")  # noqa: T201
            pack(files, data, 3)
    output = workdir / ("predictions" if args.format == "files" else f"predictions-{args.format}")
    config = load_config(
        None,
        [
            f"input.uri={data}",
            f"input.format={args.format}",
            *CARRIED[args.format],
            f"output.uri={output}",
            f"model.name={args.model}",
            "model.random_init=true",
            "job.name=demo",
            # The three broken files are there to be shown as rows with a reason, whatever
            # --images is (3 of 23 would be above the default budget of 5%).
            "output.max_failure_fraction=1.0",
        ],
    )
    logs.configure(config.logging.format, config.logging.level)
    logrelay.install()
    summary = run_job(config, overwrite=True)
    print(summary.render())  # noqa: T201
    print(f"\npredictions: {output / 'data'}  manifest: {output / '_SUCCESS'}")  # noqa: T201
    return 0
