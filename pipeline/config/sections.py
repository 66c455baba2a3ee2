"""The config's sections: one pydantic model each, every key with its default and its limits.

What each key means is commented here and in examples/config.yaml; checks that need more than
one key are :mod:`pipeline.config.checks`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.config.hashing import DEFAULT_PROMPT_TEMPLATE, config_hash
from pipeline.config.worker_groups import WorkerGroup

Unit = Annotated[float, Field(ge=0, le=1)]  # a per-channel mean, on the 0-1 scale torchvision uses


Spread = Annotated[float, Field(gt=0, le=1)]  # a per-channel standard deviation, same scale


DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


# What input.allowed_schemes may name: "local" is a plain path (absolute or relative to the
# manifest), "file" a file:// URL, the others their URL schemes (docs/http.md).
InputScheme = Literal["local", "file", "s3", "s3a", "gs", "gcs", "az", "abfs", "http", "https"]


DEFAULT_ALLOWED_SCHEMES: tuple[InputScheme, ...] = (
    "local",
    "s3",
    "s3a",
    "gs",
    "gcs",
    "az",
    "abfs",
    "http",
    "https",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class JobConfig(_Section):
    """Identity of the job: the name dashboards filter on and the run id resume keys on."""

    name: str = Field(default="image-classify", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    run_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InputConfig(_Section):
    """Where the images are: a directory or prefix of files or of shards, or a manifest of URIs."""

    uri: str = ""
    # files: one image per file (or a manifest). parquet / webdataset: images inside shards
    # (pipeline.inputs.shards). auto: decided from what the folder or prefix holds.
    format: Literal["auto", "files", "parquet", "webdataset"] = "auto"
    image_column: str = "image"  # parquet: the binary column holding each record's image
    key_column: str | None = None  # parquet: each record's stable id; None: shard + row index
    manifest_column: str = "uri"
    extensions: list[str] = Field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    recursive: bool = True
    limit: int | None = Field(default=None, ge=1)
    # Local inputs (a manifest's paths included) must resolve, symlinks followed, under one
    # of these folders; others fail with reason outside_allowed_roots. Empty: anywhere.
    allowed_roots: list[str] = Field(default_factory=list)
    # Manifest columns copied unchanged into every output row (pipeline.inputs.manifest).
    passthrough_columns: list[str] = Field(default_factory=list)
    # A manifest's column holding each entry's version (an ETag, a content hash, an update
    # time): the entry's fingerprint, so an incremental run (output.previous) carries the rows
    # of entries whose version is unchanged. None: a manifest's entries have no fingerprint and
    # are all computed again; an entry whose cell is empty is computed again.
    version_column: str | None = None
    # The kinds of input a manifest may name; others fail with reason scheme_not_allowed.
    # file:// URLs are left out by default: a manifest from elsewhere cannot point into this host.
    allowed_schemes: list[InputScheme] = Field(default_factory=lambda: list(DEFAULT_ALLOWED_SCHEMES))

    @field_validator("uri")
    @classmethod
    def _uri_given(cls, value: str) -> str:
        if not value.strip():
            msg = "input.uri is required: a directory, an s3:// prefix, or a .parquet/.csv manifest"
            raise ValueError(msg)
        return value

    @field_validator("extensions")
    @classmethod
    def _dotted_lowercase(cls, value: list[str]) -> list[str]:
        return [ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in value]

    @property
    def is_manifest(self) -> bool:
        """True when the input is a manifest file rather than a directory, a prefix or a shard."""
        return self.format in ("auto", "files") and self.uri.lower().endswith((".parquet", ".csv"))

    @property
    def is_sharded(self) -> bool:
        """True when ``format`` names shards (``auto`` is decided by the listing)."""
        return self.format in ("parquet", "webdataset")


#: The libraries a model can come from (pipeline.compute.sources, docs/weights.md).
ModelSource = Literal["torchvision", "timm", "huggingface", "open_clip", "exported"]


class ModelConfig(_Section):
    """Which model (library, architecture, weights), and what to write per image."""

    # classify: top-k classes; embed: the vector the final Linear receives (docs/architecture.md).
    task: Literal["classify", "embed"] = "classify"
    # Which library builds the model; torchvision is what every config meant before the key.
    source: ModelSource = "torchvision"
    # torchvision, timm, open_clip: the architecture; huggingface without weights: a hub id
    # found in the local cache only; exported: a name for the outputs' model_name column.
    name: str = "resnet50"
    # A state dict / safetensors file; huggingface and open_clip: a directory the library
    # saved (save_pretrained; open_clip_config.json + weights); exported: a torch.export .pt2.
    weights: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    random_init: bool = False
    num_classes: int = Field(default=1000, ge=2)
    labels: str | None = None
    top_k: int = Field(default=5, ge=1, le=100)
    # The torchvision weights whose preprocessing (resize, crop, mean, std) the given weights
    # were trained with, e.g. ResNet50_Weights.IMAGENET1K_V1. None: the architecture's DEFAULT.
    preprocessing: str | None = None
    # embed only. float32: exact, and every Parquet reader has it; float16 halves the column.
    embedding_dtype: Literal["float32", "float16"] = "float32"
    normalize: bool = False  # embed only: L2-normalise each vector (unit length)
    # open_clip classify: the text each label of model.labels becomes ({} is the label).
    prompt_template: str = Field(default=DEFAULT_PROMPT_TEMPLATE, pattern=r"\{\}")


#: A model's output name under ``output.uri`` (``models[].output``): one folder, no path tricks.
OUTPUT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class ModelEntry(ModelConfig):
    """One model of ``models:`` (several models over one decode, pipeline.config.multi)."""

    # The folder under output.uri this model's output is written to (its own _SUCCESS).
    output: str = Field(pattern=OUTPUT_NAME_PATTERN)
    # This model's inference.precision; None: the run's. Part of this model's config hash.
    precision: Literal["auto", "fp32", "bf16", "fp16"] | None = None


class PreprocessConfig(_Section):
    """Decode and crop on CPU workers; the crop travels to inference as uint8."""

    resize_size: int | None = Field(default=None, ge=8, le=4096)
    crop_size: int | None = Field(default=None, ge=8, le=4096)
    # Normalisation the weights were trained with, e.g. [0.485, 0.456, 0.406]; None: model.preprocessing's.
    mean: tuple[Unit, Unit, Unit] | None = None
    std: tuple[Spread, Spread, Spread] | None = None
    # Resampling of the resize; None: the model's own (source.exported: bilinear).
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None
    max_image_pixels: int = Field(default=89_478_485, ge=1)
    # An input larger than this fails with reason too_large before more of it is read.
    max_input_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    # A read of one input still running after this fails its row with reason timeout.
    max_read_seconds: float = Field(default=300.0, gt=0)
    reduced_decode: bool = True
    fetch_threads: int = Field(default=16, ge=1, le=256)
    # Images per decode call. Each call pays Ray Data's per-batch slicing and format work;
    # on the 2-core machine 128 ran end to end at 0.85 of the ideal against 0.79 at 32
    # (interleaved runs, docs/benchmarks.md). A listing block holds up to
    # graph.READ_ROWS_PER_TASK rows, cut into calls of this size.
    batch_size: int = Field(default=128, ge=1)
    # gpu: JPEGs travel to the inference actor as bytes and are decoded there (nvJPEG),
    # for clusters short of CPUs; the CPU workers read only headers (pipeline.compute.device_decode).
    decode_device: Literal["cpu", "gpu"] = "cpu"


class InferenceConfig(_Section):
    """How the model runs inside each actor."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    channels_last: bool = True
    compile: bool = False
    torch_threads: int | None = Field(default=None, ge=1)
    max_oom_retries: int = Field(default=4, ge=0, le=16)


class OutputConfig(_Section):
    """Where the Parquet parts and the commit manifest go."""

    uri: str = "./output"
    # None: decide, about 15 s of work per part (pipeline.run.placement.part_rows).
    rows_per_file: int | None = Field(default=None, ge=1)
    mode: Literal["error", "overwrite"] = "error"
    # An output already committed with this same configuration (a scheduler's retry after
    # success): skip exits 0 and writes nothing there; fail exits 3 (pipeline run --strict).
    if_committed: Literal["skip", "fail"] = "skip"
    # Above this fraction of failed rows the run is not committed (exit 5). On by default: a
    # minimal config whose every input failed must not commit and exit 0.
    max_failure_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    # One writer per output: a job holds a lease on it, renewed every third of this. A
    # crashed job's lease lapses after this long (a job killed on the same host at once).
    lease_seconds: float = Field(default=120.0, ge=1.0, le=86_400.0)
    # After the commit, also write _report.html beside _SUCCESS (pipeline.review.report); a failure
    # there is a warning in the log, never a failed run.
    report: bool = False
    # An incremental run: a committed output of this configuration (the night before) whose rows
    # are carried forward where the input is unchanged; the rest is computed (docs/storage.md,
    # "Incremental runs"). A folder, or a table's run: iceberg:ns.table[@run] (in output.catalog)
    # or a Lance dataset's URI (.lance[@run]). None: every input is computed.
    previous: str | None = None
    # output.previous with nothing there: fail (exit 2), or run in full (the chart's first night).
    # A previous output that holds parts but no _SUCCESS is refused either way.
    previous_missing: Literal["fail", "full_run"] = "fail"
    # output.previous made with another model, weights or preprocessing (its config hash): refuse
    # (exit 2: a full run is needed), or recompute every input and say so.
    previous_other_config: Literal["refuse", "recompute"] = "refuse"
    # Rows that failed in output.previous and whose input is unchanged: retried (false), or kept.
    keep_failed: bool = False
    # What the verified parts become (docs/storage.md, "Tables"): parquet, the folder as it is;
    # iceberg, the parts added to output.table in one snapshot; lance, the rows written as
    # fragments of the dataset output.table, then one version. Either carries the run id.
    format: Literal["parquet", "iceberg", "lance"] = "parquet"
    # iceberg: the table's identifier in the catalog (namespace.name); lance: the dataset's URI
    # (a local path or s3://). Required by both; one table takes every nightly run's rows.
    table: str | None = None
    # iceberg: the pyiceberg catalog's properties (type, uri, warehouse, ...). Empty: the
    # embedded SQL catalog on the SQLite file pipeline-catalog.sqlite, in the working directory.
    catalog: dict[str, str] = Field(default_factory=dict)
    # lance with model.task embed: an ANN index on the embedding, built after the commit.
    index: Literal["none", "ivf_flat", "ivf_pq"] = "none"


class StorageConfig(_Section):
    """Object-storage client settings; credentials come from the standard AWS chain only."""

    endpoint_url: str | None = None
    region: str | None = None
    max_attempts: int = Field(default=10, ge=1, le=50)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    # Longest one request may take, its retries included: then it fails as an outage (exit 4).
    call_timeout_s: float = Field(default=180.0, gt=0)
    anonymous: bool = False


class HttpConfig(_Section):
    """How ``http://`` and ``https://`` inputs are fetched (pipeline.inputs.http_fetch, docs/http.md)."""

    connect_timeout_s: float = Field(default=10.0, gt=0)
    # Longest silence while waiting for the response or the next bytes of its body.
    read_timeout_s: float = Field(default=30.0, gt=0)
    # Tries per URL on 429, 5xx, timeouts and refused connections; then the row fails.
    max_attempts: int = Field(default=4, ge=1, le=20)
    # First wait between tries; doubled each try, with jitter, never more than max_wait_s.
    backoff_s: float = Field(default=0.5, ge=0)
    # Longest wait before a retry, a server's Retry-After included.
    max_wait_s: float = Field(default=30.0, ge=0)
    max_redirects: int = Field(default=5, ge=0, le=30)
    # Hosts a decode worker keeps connections to (each up to preprocess.fetch_threads).
    max_hosts: int = Field(default=32, ge=1, le=1024)
    # Link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254,
    # metadata.google.internal) are refused (address_not_allowed) unless this is true.
    allow_link_local: bool = False


class ResourcesConfig(_Section):
    """How the stages map onto the Ray cluster."""

    ray_address: str | None = None
    # How long to wait for the cluster at ray_address (or RAY_ADDRESS) to answer: exit 6 after.
    connect_timeout_s: float = Field(default=60.0, gt=0)
    placement: Literal["local", "worker_groups"] = "local"
    cpu_group_resource: str = "cpu_group"
    gpu_group_resource: str = "gpu_group"
    # None: decide (1 CPU per decode task on worker groups; a share of the node locally).
    decode_num_cpus: float | None = Field(default=None, gt=0)
    decode_concurrency: int | None = Field(default=None, ge=1)
    actor_num_cpus: float | None = Field(default=None, ge=0)
    actor_num_gpus: float | None = Field(default=None, ge=0)
    # None: 1 (a local CPU-only run: one actor running two model calls at once, pipeline.run.graph).
    min_actors: int | None = Field(default=None, ge=1)
    max_actors: int | None = Field(default=None, ge=1)
    object_store_memory_bytes: int | None = Field(default=None, ge=75 * 1024 * 1024)
    stall_timeout_s: float = Field(default=600.0, gt=0)
    worker_groups: dict[str, WorkerGroup] = Field(
        default_factory=dict
    )  # declared: pipeline.config.worker_groups
    gpu_workers_timeout_s: float = Field(default=900.0, gt=0)  # for the first GPU worker; exit 10 after
    stop_grace_s: float = Field(default=20.0, gt=0)  # after SIGTERM/SIGINT: drain what is in flight
    # models: which models share an inference actor (docs/multi-model.md, "Placement"). Each
    # inner list is one actor pool, by models[].output, every output exactly once; the pools run
    # one after the other over the same decoded blocks. Empty: decided from actor_memory_gib.
    model_groups: list[list[str]] = Field(default_factory=list, max_length=8)
    # models: the memory one inference actor's device has for models (a GPU's total memory).
    # Set, the models are packed first-fit into pools whose estimates fit it (pipeline.run.pools);
    # None: every model in one actor, as on CPU.
    actor_memory_gib: float | None = Field(default=None, gt=0, le=4096)


class LoggingConfig(_Section):
    """structlog output: JSON lines in production, readable console locally."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"
    progress: bool | Literal["auto"] = "auto"  # YAML reads on/off as booleans


class MetricsConfig(_Section):
    """Driver-side job metrics and where they are pushed."""

    pushgateway_url: str | None = None
    push_interval_s: float = Field(default=15.0, gt=0)
    # A local file that gets the run summary's JSON as the run ends, whatever its status (besides
    # <output.uri>/_summary-<run id>.json): for a workflow step that reads the outcome from a file.
    summary_path: str | None = None
    # Files (a mounted Secret) with Pushgateway credentials, never the secret (pipeline.ops.push_auth).
    pushgateway_username_file: str | None = None
    pushgateway_password_file: str | None = None
    pushgateway_token_file: str | None = None


#: Names the pipeline writes or passes between stages (pipeline.schema's, both tasks; a test keeps
#: the two equal): a carried manifest column must not take one.
RESERVED_COLUMNS = frozenset(
    {
        *("row_id", "uri", "status", "reason", "error", "model_name", "model_sha256", "run_id"),
        "fingerprint",
        *("top_k_ids", "top_k_labels", "top_k_scores", "label", "score", "embedding"),
        *("image", "data", "encoding", "carried_index"),
        *("shard_index", "record_bytes", "carried_row"),
    }
)


class Config(_Section):
    """The whole job configuration."""

    job: JobConfig = Field(default_factory=JobConfig)
    input: InputConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    # Several models over one decode, each its own output under output.uri (docs/multi-model.md);
    # empty: the one model: section. Hashed only when set, so a single-model config hashes as before.
    models: list[ModelEntry] = Field(default_factory=list, max_length=8)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as it would be written back to YAML."""
        return self.model_dump(mode="json")

    def config_hash(self, weights_sha256: str | None = None) -> str:
        """sha256 of the settings that change results, and of the weights' bytes; a resume must match it.

        Hashed: which inputs (``input`` but its limits ``allowed_roots`` and
        ``allowed_schemes``; the carried columns, which shape every part's schema, only when
        there are some), the model (architecture, weights, and the task's keys: labels and
        top-k to classify; the task, embedding dtype and normalisation to embed), the
        preprocessing that shapes the pixels, and the precision class (fp32, or mixed: bf16
        and fp16 alike). A classification hash is the one it was before ``model.task``
        existed. Everything else only changes how, where or with what limits the job runs,
        so a resume may change it: a smaller batch after an out-of-memory, a higher failure
        budget after exit 5, more resources, other retry settings.

        ``weights_sha256``: what the weights are (their sha256, read once per run, or
        ``random-init``), hashed beside where they are. None: the settings alone, the hash of
        runs started before it covered the weights (pipeline.outputs.claim).
        """
        return config_hash(self, weights_sha256)
