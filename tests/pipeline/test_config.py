"""Configuration: precedence, validation before any work, and clear errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import env_overrides, load_config
from pipeline.errors import ConfigError


@pytest.fixture
def config_file(tmp_path: Path, sample_images: Path, weights_file: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "input": {"uri": str(sample_images)},
                "model": {"name": "resnet18", "weights": str(weights_file)},
                "output": {"uri": str(tmp_path / "out")},
            }
        )
    )
    return path


def _last_error(err: str) -> str:
    """The command's last stderr line: ``error: ...`` text, or (logs not on a terminal) a JSON error."""
    last = err.strip().splitlines()[-1]
    if last.startswith("{"):
        line = json.loads(last)
        assert (line["level"], line["exit_code"]) == ("error", 2)
        return f"error: {line['event']}"
    return last


def _edit(path: Path, section: str, key: str, value: object) -> Path:
    data = yaml.safe_load(path.read_text())
    data.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(data))
    return path


class TestPrecedence:
    def test_set_beats_environment_beats_file(self, config_file):
        """--set overrides PIPELINE_ env vars, which override the file."""
        env = {"PIPELINE_OUTPUT__ROWS_PER_FILE": "7", "PIPELINE_MODEL__TOP_K": "3"}
        config = load_config(config_file, ["model.top_k=2"], environ=env)
        assert config.output.rows_per_file == 7
        assert config.model.top_k == 2

    def test_env_names_map_to_dotted_keys(self):
        """PIPELINE_SECTION__KEY maps to section.key with YAML-typed values."""
        assert env_overrides({"PIPELINE_INFERENCE__BATCH_SIZE": "64", "OTHER": "x"}) == [
            ("inference.batch_size", 64)
        ]

    def test_show_prints_resolved_config(self, config_file, capsys):
        """`pipeline config --show` prints the resolved YAML, overrides applied."""
        assert main(["config", "--config", str(config_file), "--show", "--set", "job.name=nightly"]) == 0
        shown = yaml.safe_load(capsys.readouterr().out)
        assert shown["job"]["name"] == "nightly"
        assert shown["inference"]["precision"] == "auto"

    def test_example_config_is_valid(self, sample_images):
        """The commented example config in the repository loads (paths pointed at test data)."""
        example = Path(__file__).parents[2] / "examples" / "config.yaml"
        config = load_config(
            example,
            [f"input.uri={sample_images}", "model.random_init=true", "model.weights=null"],
            environ={},
        )
        assert config.model.name == "resnet50"


#: Keys the example sets to show their shape (a bucket, a weights file): the code has no such default.
EXAMPLE_PLACEHOLDERS = {"input.uri", "model.weights", "output.uri"}


def _leaves(data: dict, prefix: str = "") -> dict[str, object]:
    """``{"section.key": value}`` of a nested mapping."""
    found: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            found.update(_leaves(value, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = value
    return found


class TestDefaults:
    def test_the_failure_budget_is_on_without_the_example(self, sample_images):
        """A config that never names output.max_failure_fraction still fails a run above 5% failed rows."""
        config = load_config(None, [f"input.uri={sample_images}", "model.random_init=true"], environ={})
        assert config.output.max_failure_fraction == 0.05

    def test_the_example_config_agrees_with_the_code_on_every_key(self):
        """examples/config.yaml holds every key the code has, each at the code's own default."""
        from pipeline.config import Config

        example = yaml.safe_load((Path(__file__).parents[2] / "examples" / "config.yaml").read_text())
        defaults = Config.model_validate({"input": {"uri": "-"}}).to_dict()
        shown, code = _leaves(example), _leaves(defaults)
        assert set(shown) == set(code)
        differing = {key: (shown[key], code[key]) for key in code if shown[key] != code[key]}
        assert set(differing) == EXAMPLE_PLACEHOLDERS, differing


class TestErrors:
    @pytest.mark.parametrize(
        ("section", "key", "value", "expected"),
        [
            (
                "model",
                "nmae",
                "resnet18",
                "config key 'model.nmae': got 'resnet18'; unknown key; allowed keys here:",
            ),
            ("inference", "batch_size", "lots", "config key 'inference.batch_size'"),
            (
                "output",
                "rows_per_file",
                -1,
                "config key 'output.rows_per_file': got -1; input should be greater than or equal to 1",
            ),
            (
                "input",
                "uri",
                "/does/not/exist",
                "config key 'input.uri': got '/does/not/exist'; no such file or directory",
            ),
            (
                "model",
                "name",
                "resnet9000",
                "config key 'model.name': got 'resnet9000'; not a torchvision classification model",
            ),
        ],
    )
    def test_bad_value_is_named_with_exit_code_2(self, config_file, capfd, section, key, value, expected):
        """Each bad key or value stops before any work, names key and value, and exits 2."""
        _edit(config_file, section, key, value)
        assert main(["run", "--config", str(config_file)]) == 2
        err = _last_error(capfd.readouterr().err)
        assert err.startswith("error: ")
        assert expected in err

    def test_sha256_mismatch_is_refused(self, config_file, capfd, weights_file):
        """A weights file whose checksum differs from model.sha256 is refused before Ray starts."""
        actual = hashlib.sha256(weights_file.read_bytes()).hexdigest()
        _edit(config_file, "model", "sha256", "0" * 64)
        assert main(["run", "--config", str(config_file)]) == 2
        err = _last_error(capfd.readouterr().err)
        assert "model.sha256" in err
        assert actual in err
        assert "refusing" in err

    def test_missing_input_key(self, tmp_path, capsys):
        """A config without input.uri says the key is required."""
        path = tmp_path / "c.yaml"
        path.write_text("model: {random_init: true}\n")
        assert main(["config", "--config", str(path), "--show"]) == 2
        assert "config key 'input.uri': got None; input.uri is required" in capsys.readouterr().err

    def test_weights_or_random_init_required(self, config_file):
        """Random weights only when asked for explicitly."""
        with pytest.raises(ConfigError, match=r"model\.weights"):
            load_config(config_file, ["model.weights=null"], environ={})

    def test_exit_code_from_the_console_script(self, config_file):
        """The installed entry point exits 2 with the message on stderr."""
        _edit(config_file, "inference", "precision", "fp8")
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", "--config", str(config_file)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 2
        assert "config key 'inference.precision': got 'fp8'" in result.stderr


class TestConfigHash:
    def test_operational_settings_do_not_change_the_hash(self, config_file):
        """Retry settings, cluster sizing, logging, write mode, batch sizes, threads and the failure
        budget leave the hash (and resume) alone: lowering a batch after an out-of-memory is a resume."""
        base = load_config(config_file, environ={}).config_hash()
        other = load_config(
            config_file,
            [
                "storage.max_attempts=3",
                "resources.max_actors=4",
                "logging.level=debug",
                "output.mode=overwrite",
                "inference.batch_size=16",
                "preprocess.batch_size=32",
                "preprocess.fetch_threads=4",
                "inference.torch_threads=2",
                "inference.max_oom_retries=8",
                "inference.compile=true",
                "output.rows_per_file=1000",
                "output.max_failure_fraction=0.5",
                "preprocess.max_read_seconds=30",
                "job.name=renamed",
            ],
            environ={},
        ).config_hash()
        assert other == base

    def test_result_settings_change_the_hash(self, config_file):
        """A different model, crop, top-k, input or precision class is a different run."""
        base = load_config(config_file, environ={}).config_hash()
        for override in (
            "model.top_k=3",
            "preprocess.crop_size=200",
            "model.name=resnet34",
            "inference.precision=bf16",
            "preprocess.reduced_decode=false",
            "preprocess.decode_device=gpu",
            "input.recursive=false",
        ):
            assert load_config(config_file, [override], environ={}).config_hash() != base, override

    def test_task_changes_the_hash_and_a_resume_cannot_switch_it(self, config_file):
        """classify and embed are different runs; so are two embedding dtypes or normalisations."""
        classify = load_config(config_file, environ={}).config_hash()
        embed = load_config(config_file, ["model.task=embed"], environ={}).config_hash()
        assert embed != classify
        for override in ("model.embedding_dtype=float16", "model.normalize=true"):
            changed = load_config(config_file, ["model.task=embed", override], environ={})
            assert changed.config_hash() != embed, override

    def test_keys_a_task_does_not_use_leave_its_hash_alone(self, config_file):
        """top-k and labels mean nothing to embed; the embedding keys nothing to classify."""
        embed = load_config(config_file, ["model.task=embed"], environ={}).config_hash()
        assert (
            load_config(config_file, ["model.task=embed", "model.top_k=3"], environ={}).config_hash() == embed
        )
        classify = load_config(config_file, environ={}).config_hash()
        for override in ("model.embedding_dtype=float16", "model.normalize=true"):
            assert load_config(config_file, [override], environ={}).config_hash() == classify, override

    def test_a_classify_run_from_before_model_task_still_resumes(self):
        """The hash of a classification config is the one it had before model.task and
        preprocess.mean/std existed (the value computed by the code of that time)."""
        overrides = ["input.uri=/data/images", "model.random_init=true", "output.uri=/data/out"]
        config = load_config(None, overrides, environ={})
        assert config.config_hash() == "f05bc9fc1bb4396388dc94c968db3dd326152fbfec230df4170d8a5627f51e79"

    def test_bf16_and_fp16_are_one_precision_class(self, config_file):
        """Switching between the two mixed precisions (e.g. on another GPU) keeps the run resumable."""
        bf16 = load_config(config_file, ["inference.precision=bf16"], environ={}).config_hash()
        assert load_config(config_file, ["inference.precision=fp16"], environ={}).config_hash() == bf16


class TestDefaultsDecide:
    def test_show_output_fed_back_plans_the_same(self, config_file, tmp_path):
        """`pipeline config --show` read back in is the same config: same hash, same resource plan."""
        from pipeline.config import dump_yaml
        from pipeline.run.placement import plan_resources

        config = load_config(config_file, environ={})
        shown = tmp_path / "shown.yaml"
        shown.write_text(dump_yaml(config), encoding="utf-8")
        again = load_config(shown, environ={})
        assert again.config_hash() == config.config_hash()
        for cluster in ({"CPU": 2.0}, {"CPU": 16.0, "GPU": 1.0}):
            assert plan_resources(again, cluster) == plan_resources(config, cluster), cluster

    def test_null_means_decide(self, config_file):
        """An explicit null for an automatic setting is the automatic value, not an error."""
        from pipeline.run.placement import plan_resources

        config = load_config(config_file, ["resources.decode_num_cpus=null"], environ={})
        assert plan_resources(config, {"CPU": 2.0}) == plan_resources(
            load_config(config_file, environ={}), {"CPU": 2.0}
        )


class TestRunIdFlag:
    def test_a_bad_run_id_is_a_config_error_with_exit_2(self, config_file, capsys):
        """--run-id is checked like any other value: exit 2, the key, the value and the rule; no traceback."""
        assert main(["run", "--config", str(config_file), "--run-id", "bad id!"]) == 2
        err = capsys.readouterr().err
        assert "job.run_id" in err
        assert "'bad id!'" in err
        assert "pattern" in err
        assert "Traceback" not in err


class TestTypedOverrides:
    def test_text_keys_keep_the_text_yaml_would_turn_into_a_number(self, config_file):
        """--set and PIPELINE_ values are typed by the schema: a digit-only sha256 or run id stays text."""
        digits = "0" * 63 + "1"
        config = load_config(
            config_file,
            [f"model.sha256={digits}", "job.run_id=20261201"],
            environ={"PIPELINE_JOB__NAME": "007"},
        )
        assert (config.model.sha256, config.job.run_id, config.job.name) == (digits, "20261201", "007")

    def test_other_keys_are_still_parsed(self, config_file):
        """Numbers, booleans and null keep working for the keys that take them."""
        config = load_config(
            config_file,
            ["inference.batch_size=16", "inference.compile=true", "resources.max_actors=null"],
            environ={},
        )
        assert (config.inference.batch_size, config.inference.compile, config.resources.max_actors) == (
            16,
            True,
            None,
        )


class TestSmallErrors:
    def test_an_environment_override_error_names_the_variable(self, tmp_path):
        """A bad value (or key) from the environment names the variable to fix, not only the dotted key."""
        base = [f"input.uri={tmp_path}", "model.random_init=true"]
        with pytest.raises(ConfigError) as bad:
            load_config(None, base, environ={"PIPELINE_OUTPUT__ROWS_PER_FILE": "abc"})
        assert str(bad.value).startswith("environment variable PIPELINE_OUTPUT__ROWS_PER_FILE")
        assert "got 'abc'" in str(bad.value)
        with pytest.raises(ConfigError, match=r"^environment variable PIPELINE_OUTPUT__URII .*unknown key"):
            load_config(None, base, environ={"PIPELINE_OUTPUT__URII": "s3://b/out"})
        with pytest.raises(ConfigError, match=r"^config key 'output.rows_per_file'"):  # --set wins, is named
            load_config(
                None, [*base, "output.rows_per_file=abc"], environ={"PIPELINE_OUTPUT__ROWS_PER_FILE": "9"}
            )

    def test_a_yaml_error_names_the_file_in_one_line(self, tmp_path):
        """Broken YAML: one line naming the file, the line and the problem (no "<unicode string>")."""
        path = tmp_path / "job.yaml"
        path.write_text("input:\n  uri: /tmp\n model: x\n")
        with pytest.raises(ConfigError) as bad:
            load_config(path, environ={})
        message = str(bad.value)
        assert f"{path} line 3, column 2" in message
        assert "<unicode string>" not in message
        assert "\n" not in message

    def test_set_only_without_an_input_says_input_uri_is_required(self, capsys):
        """`pipeline run --set model.random_init=true`: the key to add is input.uri, not a section."""
        assert main(["config", "--set", "model.random_init=true"]) == 2
        assert "config key 'input.uri': got None; input.uri is required" in capsys.readouterr().err

    def test_every_default_is_in_the_help(self, capsys):
        """Each option with a default says it in --help (`pipeline demo --help` included)."""
        from pipeline.cli import build_parser

        commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        for name, parser in commands.items():
            formatter = parser.formatter_class(parser.prog)
            for action in parser._actions:
                if action.default in (None, False, [], "==SUPPRESS==") or not action.option_strings:
                    continue
                assert "default" in formatter._get_help_string(action), (name, action.dest)
        with pytest.raises(SystemExit):
            main(["demo", "--help"])
        shown = " ".join(capsys.readouterr().out.split())
        for default in (
            "(default: 300)",
            "(default: demo-output)",
            "(default: resnet18)",
            "(default: files)",
        ):
            assert default in shown


class TestCliHabits:
    def test_config_without_arguments_is_a_usage_error_with_exit_2(self, capsys):
        """`pipeline config` alone says what it needs and exits 2, as documented for bad configs."""
        assert main(["config"]) == 2
        assert "needs --config FILE, --set KEY=VALUE or --schema" in capsys.readouterr().err

    def test_a_config_given_only_by_set_is_enough(self, sample_images, capsys):
        """No YAML file: --set keys alone make a valid config (here shown, as `run` would load it)."""
        overrides = ["--set", f"input.uri={sample_images}", "--set", "model.random_init=true"]
        assert main(["config", *overrides]) == 0
        shown = yaml.safe_load(capsys.readouterr().out)
        assert shown["input"]["uri"] == str(sample_images)
        assert shown["model"]["random_init"] is True

    def test_schema_into_a_reader_that_left_ends_quietly(self):
        """`pipeline config --schema | head -1`: the reader is gone before the schema is written;
        no BrokenPipe traceback, exit 0."""
        producer = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "config", "--schema"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert producer.stdout is not None
        assert producer.stderr is not None
        producer.stdout.close()  # as head does after its line, only sooner
        err = producer.stderr.read().decode()
        assert producer.wait(timeout=120) == 0, err
        assert "Traceback" not in err

    def test_every_subcommand_help_has_a_description_an_example_and_the_exit_codes(self, capsys):
        """`pipeline X --help` says what X does, shows one example, lists the exit codes; no doc markup."""
        from pipeline.cli import build_parser

        commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
        for name in commands:
            with pytest.raises(SystemExit):
                main([name, "--help"])
            text = capsys.readouterr().out
            assert f"example:\n  pipeline {name}" in text, name
            assert "\n    6  the Ray job failed" in text, name
            assert "``" not in text, name
        with pytest.raises(SystemExit):
            main(["bench", "--help"])
        bench = capsys.readouterr().out
        assert "--images IMAGES       generated JPEGs" in bench

    def test_a_misspelt_environment_variable_is_reported(self, config_file, capsys, monkeypatch):
        """PIPELINE_OUTPUT_URI (one underscore) is not read: the CLI says so instead of ignoring it."""
        monkeypatch.setenv("PIPELINE_OUTPUT_URI", "s3://bucket/typo")
        monkeypatch.setenv("PIPELINE_SECRETS", "not-a-config-key")
        assert main(["config", "--config", str(config_file), "--show"]) == 0
        err = capsys.readouterr().err
        assert "PIPELINE_OUTPUT_URI is not read" in err
        assert "PIPELINE_SECRETS" not in err
