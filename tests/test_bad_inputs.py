"""Bad input of every kind ends with one line `error: <key or path>: <reason>`, exit code 2.

Most rows run in this process through `dlmjax.main.cli(argv)`: validation happens before jax
compiles anything, so a row costs milliseconds. A few go through the real `python -m dlmjax.main`
to show the command line behaves the same. The table is quoted in the issue's closing note.
"""

import gzip
import json
import os
import subprocess
import sys

import pytest

from dlmjax import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(ROOT, "tests", "micro_config.py")
KJV = ("--config.data.source=kjv", "--config.data.vocab_size=0",
       "--config.model.vocab_size=4096")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Corrupt inputs: each is read by one of the per-file readers."""
    d = tmp_path_factory.mktemp("bad_files")
    rng = __import__("numpy").random.default_rng(0)
    noise = rng.integers(0, 256, 4096, dtype="uint8").tobytes()
    (d / "binary.txt").write_bytes(b"\x80" + noise)
    (d / "corrupt.txt.gz").write_bytes(gzip.compress(b"")[:10] + b"not deflate data")
    (d / "garbage.array_record").write_bytes(noise)
    (d / "garbage.parquet").write_bytes(noise)
    (d / "no_field.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    (d / "tokenizer.json").write_text('{"model": ')
    (d / "shards").mkdir()
    (d / "shards" / "manifest.json").write_bytes(b"\xff\xfe" + noise)
    (d / "syntax.py").write_text("def get_config(:\n")
    (d / "prompts.txt").write_text("in the beginning " * 40 + "\n")
    return d


def _rows(d):
    """(arguments after --config/--workdir, expected fragment of the one error line)."""
    nan_rows = [(f"--config.{key}=nan", f"{key}: must be a finite number, got nan")
                for key in ("optim.lr", "model.rope_theta", "sample.top_p", "noise.scale")]
    return nan_rows + [
        (("--config.optim.lr=inf",), "optim.lr: must be a finite number, got inf"),
        (("--config.optim.lr=-0.1",), "optim.lr: must be > 0, got -0.1"),
        (("--config.optim.b1=1.0",), "optim.b1: must be in [0, 1), got 1.0"),
        (("--config.optim.b2=1.5",), "optim.b2: must be in [0, 1), got 1.5"),
        (("--config.optim.weight_decay=-1.0",), "optim.weight_decay: must be >= 0"),
        (("--config.optim.warmup_steps=-5",), "optim.warmup_steps: must be >= 0, got -5"),
        (("--config.optim.cooldown_fraction=1.5",), "optim.cooldown_fraction: must be in [0, 1]"),
        (("--config.noise.type=hybrid",), "noise.type: unknown noise type 'hybrid'"),
        (("--config.noise.per_token_fraction=2.0",), "noise.per_token_fraction: must be in [0, 1]"),
        (("--config.noise.loss_aggregation=avg",), "noise.loss_aggregation: 'avg' is not one of"),
        (("--config.noise.chunk_size=0",), "noise.chunk_size: must be >= 1, got 0"),
        (("--config.model.num_heads=7",), "model.num_heads"),
        (("--config.model.norm_eps=0.0",), "model.norm_eps: must be > 0, got 0.0"),
        (("--config.model.dtype=float16",), "model.dtype='float16'"),
        (("--config.objective=gpt",), "objective: 'gpt' is not one of"),
        (("--config.train.batch_size=0",), "train.batch_size: must be >= 1, got 0"),
        (("--config.train.microbatches=3",), "train.microbatches: 3 does not divide"),
        (("--config.train.steps=-1",), "train.steps: must be >= 0, got -1"),
        (("--config.train.log_every=0",), "train.log_every: must be >= 1, got 0"),
        (("--config.train.keep_checkpoints=0",), "train.keep_checkpoints: must be >= 1, got 0"),
        (("--config.train.profile_steps=abc",), "train.profile_steps"),
        (("--config.sample.method=beam",), "sample.method: 'beam' is not one of"),
        (("--config.sample.steps=0",), "sample.steps: must be >= 1, got 0"),
        (("--config.sample.temperature=-1.0",), "sample.temperature: must be >= 0, got -1.0"),
        (("--config.sample.top_p=0.0",), "sample.top_p: must be in (0, 1], got 0.0"),
        (("--config.sample.schedule=exp",), "sample.schedule: 'exp' is not one of"),
        (("--config.sample.block_size=64",), "sample.block_size: 64 exceeds the sample length 32"),
        (("--mode=eval", "--config.eval.grid_points=1"), "eval.grid_points: must be >= 2, got 1"),
        (("--mode=eval", "--config.eval.batches=0"), "eval.batches: must be >= 1, got 0"),
        (("--config.mesh.strategy=zero3",), "mesh.strategy: 'zero3' is not one of"),
        (("--config.mesh.data=3",), "mesh: sizes"),
        (("--config.data.heldout_fraction=1.5",), "data.heldout_fraction: must be in (0, 1)"),
        (("--config.data.source=web",), "data.source='web' must be one of"),
        (("--config.data.source=synthetic_topics", "--config.data.topic_concentration=0.0"),
         "data.topic_concentration: must be > 0, got 0.0"),
        (("--config.data.vocab_size=128",),
         "model.vocab_size=64 is smaller than the data's vocabulary of 128"),
        (("--mode=eval", "--config.data.vocab_size=128"),
         "model.vocab_size=64 is smaller than the data's vocabulary of 128"),
        (("--mode=eval", "--config.data.source=kjv", "--config.data.vocab_size=0"),
         "model.vocab_size=64 is smaller than the data's vocabulary of 4096"),
        (("--mode=sample", "--config.data.source=kjv"),
         "model.vocab_size: 64 is smaller than the 4096 ids of the tokenizer"),
        (("--config.data.source=files", "--config.data.paths=/nonexistent/corpus.txt", *KJV[1:]),
         "data.paths: '/nonexistent/corpus.txt' matches no file"),
        (("--config.data.source=tokenized", "--config.data.vocab_size=0"), "data.paths: not set"),
        ((*KJV, f"--config.data.tokenizer={d}/tokenizer.json"),
         f"data.tokenizer: cannot load '{d}/tokenizer.json'"),
        ((*KJV, "--config.data.tokenizer=/nonexistent/tok.json"),
         "data.tokenizer: file '/nonexistent/tok.json' does not exist"),
        (("--config.data.source=tokenized", f"--config.data.paths={d}/shards",
          "--config.data.vocab_size=64"), f"{d}/shards/manifest.json: cannot read"),
        (("--config.train.stesp=5",), '--config.train.stesp: unknown config key; did you mean '
                                      '"steps"?'),
        (("--config.train.steps=abc",), "--config.train.steps=abc"),
        (("--mode=bogus",), "--mode=bogus: value should be one of"),
        (("extra",), "extra: unexpected argument"),
        (("--num_processes=2",), "--num_processes: given without --coordinator_address"),
        (("--process_id=1",), "--process_id: given without --coordinator_address"),
        (("--coordinator_address=127.0.0.1:1234",),
         "--coordinator_address: needs --num_processes and --process_id"),
        (("--coordinator_address=nohost", "--num_processes=2", "--process_id=0"),
         "--coordinator_address: 'nohost' is not host:port"),
        (("--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=2"),
         "--process_id: must be in [0, 2), got 2"),
        (("--heartbeat_timeout=0",), "--heartbeat_timeout: must be >= 1 second, got 0"),
        (("--mode=eval",), "no checkpoint in"),
        (("--mode=sample", "--prompt_file=/nonexistent/prompts.txt"),
         "--prompt_file: /nonexistent/prompts.txt does not exist"),
        (("--mode=sample", "--num_samples=0"), "--num_samples: must be >= 1, got 0"),
        (("--mode=sample", "--prompt=hello"), "--prompt: prompts need a tokenizer"),
        (("--mode=sample", *KJV, f"--prompt_file={d}/prompts.txt"),
         "--prompt: prompt 0 has"),
    ]


# Rows whose error comes from reading a file's content, after jax has started.
def _read_rows(d):
    files = ("--config.data.source=files", *KJV[1:])
    tokenized = ("--config.data.source=tokenized", "--config.data.vocab_size=64")
    return [
        ((*files, f"--config.data.paths={d}/binary.txt"),
         f"{d}/binary.txt: cannot read: 'utf-8' codec can't decode"),
        ((*files, f"--config.data.paths={d}/corrupt.txt.gz"),
         f"{d}/corrupt.txt.gz: cannot read: Error -3 while decompressing data"),
        ((*files, f"--config.data.paths={d}/no_field.jsonl"),
         f"{d}/no_field.jsonl:1: expected a JSON object with data.text_field='text'"),
        ((*tokenized, f"--config.data.paths={d}/garbage.array_record"),
         f"{d}/garbage.array_record: cannot read:"),
        ((*tokenized, f"--config.data.paths={d}/garbage.parquet"),
         f"{d}/garbage.parquet: cannot read: Parquet magic bytes not found"),
    ]


def _assert_one_error_line(stderr, fragment):
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, (fragment, stderr[-2000:])
    assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """main.cli in this process; flags are left parsed with defaults afterwards."""
    workdirs = tmp_path_factory.mktemp("workdirs")

    def run(args, capsys, name):
        workdir = workdirs / name
        # One step at most should a row ever get past validation.
        argv = ["dlmjax.main", f"--config={MICRO}", f"--workdir={workdir}",
                "--config.train.steps=1", *args]
        code = main_lib.cli(argv)
        return code, capsys.readouterr().err

    yield run
    main_lib.flags.FLAGS.unparse_flags()
    main_lib.flags.FLAGS(["dlmjax.main"])


def test_bad_inputs_table(cli, bad_files, capsys):
    rows = _rows(bad_files)
    assert len(rows) >= 40
    table = []
    for i, (args, fragment) in enumerate(rows):
        args = (args,) if isinstance(args, str) else args
        code, stderr = cli(args, capsys, f"row{i}")
        line = _assert_one_error_line(stderr, fragment)
        assert code == 2, (args, line)
        table.append(f"{' '.join(args)} -> {line}")
    print("\n".join(table))


def test_unreadable_files_name_the_path(cli, bad_files, capsys):
    for i, (args, fragment) in enumerate(_read_rows(bad_files)):
        code, stderr = cli(args, capsys, f"read{i}")
        line = _assert_one_error_line(stderr, fragment)
        assert code == 2, (args, line)
        print(f"{' '.join(args)} -> {line}")


def test_missing_config_and_unloadable_experiment(bad_files, capsys):
    for argv, fragment in (
            (["dlmjax.main", "--workdir=/tmp/x"], "--config: required"),
            (["dlmjax.main", "--config=/nonexistent.py"],
             "--config: /nonexistent.py: no such file"),
            (["dlmjax.main", f"--config={bad_files}/syntax.py", "--workdir=/tmp/x"],
             f"--config: {bad_files}/syntax.py: cannot load: invalid syntax"),
            (["dlmjax.main", f"--config={MICRO}"], "--workdir: required for --mode=train")):
        assert main_lib.cli(argv) == 2
        print(f"{argv[1:]} -> {_assert_one_error_line(capsys.readouterr().err, fragment)}")


def test_debug_shows_the_traceback(capsys, tmp_path):
    code = main_lib.cli(["dlmjax.main", f"--config={MICRO}", f"--workdir={tmp_path}",
                         "--mode=eval", "--debug"])
    stderr = capsys.readouterr().err
    assert code == 2 and "Traceback" in stderr and "error: no checkpoint in" in stderr


@pytest.mark.parametrize("args,fragment", [
    (("--config.optim.lr=nan",), "optim.lr: must be a finite number, got nan"),
    (("--num_processes=2", "--process_id=0"), "--num_processes: given without"),
    (("--config.sample.method=beam",), "sample.method: 'beam' is not one of"),
])
def test_real_command_line(args, fragment, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dlmjax.main", f"--config={MICRO}", f"--workdir={tmp_path}",
         *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 2
    _assert_one_error_line(result.stderr, fragment)
    assert not os.listdir(tmp_path)  # refused before anything was written


def test_machine_failures_are_one_line_too(tmp_path, capsys):
    """Disk full, other OSErrors, KeyError and RuntimeError: one line, exit 1, at the same
    boundary (errors.guarded, which main.cli and the tools use)."""
    from dlmjax import errors

    def fill_the_disk():  # /dev/full fails every write with ENOSPC, as a full disk does
        with errors.writing(str(tmp_path / "metrics.jsonl")), open("/dev/full", "wb") as f:
            f.write(b"x" * 65536)
            f.flush()

    def orbax_style():  # libraries re-raise ENOSPC under their own types, keeping the text
        try:
            with open("/dev/full", "wb") as f:
                f.write(b"x" * 65536)
                f.flush()
        except OSError as e:
            raise RuntimeError(f"Error writing to file: {e}") from e

    def missing_key():
        return {"train": {}}["train"]["steps"]

    def read_a_directory():
        with open(tmp_path, "rb"):
            pass

    def runtime():
        raise RuntimeError("XLA ran out of something\nwith details on a second line")

    def tensorstore_style():  # what a full disk during an orbax save raises (verified)
        raise ValueError(f'RESOURCE_EXHAUSTED: Error writing "step/0" in OCDBT database: Failed '
                         f'writing: "{tmp_path}/checkpoints/10.orbax-checkpoint-tmp/state/d/26d": '
                         "Failed to write 6348 bytes to file 18: No space left on device "
                         "[os_error_code='28']")

    cases = [
        (tensorstore_style, {}, f"error: no space left writing {tmp_path}/checkpoints/10", 1),
        (fill_the_disk, {}, f"error: no space left writing {tmp_path}/metrics.jsonl", 1),
        (orbax_style, {"where": str(tmp_path)}, f"error: no space left writing {tmp_path}", 1),
        (missing_key, {}, "error: steps: missing key (KeyError)", 1),
        (read_a_directory, {}, f"error: {tmp_path}: Is a directory", 2),
        (runtime, {}, "error: XLA ran out of something (RuntimeError)", 1),
    ]
    for fn, kwargs, line, code in cases:
        assert errors.guarded(fn, debug=False, **kwargs) == code
        stderr = capsys.readouterr().err
        assert stderr.splitlines()[0].startswith(line), stderr
        assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr
        print(stderr.strip())
    assert errors.guarded(runtime, debug=True) == 1
    assert "Traceback" in capsys.readouterr().err
