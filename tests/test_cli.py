"""The command line as a user meets it: help everywhere, one-line errors with a non-zero exit, no tracebacks."""

import json
import shutil

import pytest

from conftest import run_cli
from scratchllm.cli import main


@pytest.fixture
def checkpoint(trained, capsys):
    """The shared tiny gpt-char-baby run (conftest.py), with what its training printed cleared."""
    run = trained("gpt-char-baby")
    capsys.readouterr()
    return run


def one_line_error(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert match in err, err
    return err


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["eval"]])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    assert "usage: scratchllm" in capsys.readouterr().out


def test_train_bad_inputs(capsys, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("too short")
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff")
    out = ["--out", str(tmp_path / "run")]
    one_line_error(capsys, ["train", "--data", str(tmp_path / "nope.txt"), *out], "no such file or folder")
    one_line_error(capsys, ["train", "--data", str(tmp_path / "empty.txt"), *out], "is empty")
    one_line_error(capsys, ["train", "--data", str(tmp_path / "short.txt"), *out], "fewer than block_size + 1")
    one_line_error(capsys, ["train", "--data", str(tmp_path / "bin.txt"), *out], "is not UTF-8 text")
    one_line_error(capsys, ["train", "--preset", "gpt-huge", *out], "unknown preset 'gpt-huge'")
    one_line_error(capsys, ["train", "--set", "n_embd=100", "--set", "n_head=3", *out], "not divisible by n_head=3")
    one_line_error(capsys, ["train", "--set", "n_lyers=2", *out], "unknown key")
    one_line_error(capsys, ["train", "--set", "n_layer=two", *out], "expected an integer")
    one_line_error(capsys, ["train", "--max-steps", "ten", *out], "expected an integer, got 'ten'")
    one_line_error(capsys, ["train", "--resume", str(tmp_path / "none"), *out], "does not exist")
    assert not (tmp_path / "run").exists()  # nothing was written by the failed runs


def test_sample_and_eval(capsys, checkpoint):
    assert main(["sample", "--checkpoint", str(checkpoint), "--prompt", "To be", "--max-new-tokens", "20", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("To be") and len(text.rstrip("\n")) >= 25 - 1
    assert main(["sample", "--checkpoint", str(checkpoint), "--prompt", "To", "--max-new-tokens", "15",
                 "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(checkpoint / "best"), "--prompt", "To", "--max-new-tokens", "15",
                 "--temperature", "0", "--top-k", "3", "--top-p", "0.5"]) == 0
    assert capsys.readouterr().out == greedy  # a best/ folder loads too; greedy ignores the filters
    assert main(["eval", "--checkpoint", str(checkpoint)]) == 0
    assert "bits/char" in capsys.readouterr().out


def test_sample_bad_inputs(capsys, checkpoint, tmp_path):
    one_line_error(capsys, ["sample", "--checkpoint", str(checkpoint), "--prompt", ""], "prompt is empty")
    one_line_error(capsys, ["sample", "--checkpoint", str(checkpoint), "--prompt", "Zürich €"], "3 character(s) outside the tokenizer's vocabulary: 'Z', 'ü', '€'")
    one_line_error(capsys, ["sample", "--checkpoint", str(tmp_path / "missing")], "does not exist")
    one_line_error(capsys, ["sample", "--checkpoint", str(tmp_path)], "is not a checkpoint")
    one_line_error(capsys, ["sample", "--checkpoint", str(checkpoint), "--top-p", "1.5"], "--top-p must be a number in (0, 1]")
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint / "latest", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    one_line_error(capsys, ["sample", "--checkpoint", str(broken)], "is corrupt or truncated")
    one_line_error(capsys, ["eval", "--checkpoint", str(broken)], "is corrupt or truncated")
    (broken / "config.json").write_text("{")
    one_line_error(capsys, ["sample", "--checkpoint", str(broken)], "config.json is unreadable or not JSON")
    older = tmp_path / "older"  # written before Linear weights were stored (in, out): refused, not misread
    shutil.copytree(checkpoint / "latest", older)
    meta = json.loads((older / "config.json").read_text())
    del meta["format_version"]
    (older / "config.json").write_text(json.dumps(meta))
    one_line_error(capsys, ["sample", "--checkpoint", str(older)], "older scratchllm that stored linear weights transposed")


def test_console_errors_have_no_traceback(tmp_path):
    result = run_cli("train", "--data", str(tmp_path / "missing.txt"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    result = run_cli("sample", "--checkpoint", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
