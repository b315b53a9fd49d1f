"""`scratchllm chat` and `convert --to-gguf`: the real SmolLM2 answers, the session keeps and trims
its history, Ctrl-C stops a reply but not the session, and bad input is one line."""

import builtins

import pytest
import torch

import scratchllm
from scratchllm.chat import ChatSession
from scratchllm.cli import main
from scratchllm.errors import ScratchLLMError
from scratchllm.generate import Sampling


def one_line_error(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and match in err, err


@pytest.fixture
def llama_run(trained, capsys):
    run = trained("llama-bpe-baby")
    capsys.readouterr()
    return run


@pytest.mark.network
def test_chat_answers_paris_offline_after_the_first_fetch(capsys, monkeypatch, smollm2_cache):
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(smollm2_cache))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the cached model is used: nothing is fetched again
    assert main(["chat", "--model", "smollm2-135m-instruct", "--prompt",
                 "What is the capital of France? Answer in one sentence.", "--temperature", "0"]) == 0
    assert "Paris" in capsys.readouterr().out


def feed(monkeypatch, lines):
    """Type `lines` at the chat prompt, then Ctrl-D."""
    it = iter(lines)

    def fake_input(prompt=""):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", fake_input)


def test_interactive_chat_streams_resets_and_exits(capsys, monkeypatch, llama_run):
    feed(monkeypatch, ["Hi", "/reset", "Oh", "/exit", "never read"])  # the tiny model's context is 32 tokens
    assert main(["chat", "--model", str(llama_run), "--max-new-tokens", "4", "--seed", "1"]) == 0
    err = capsys.readouterr().err
    assert err.count("tokens/s") == 2 and "(the conversation is forgotten)" in err


def test_ctrl_c_stops_the_reply_not_the_session(capsys, monkeypatch, llama_run):
    from scratchllm.generate import Engine

    real, steps = Engine.step, []

    def interrupted_once(self):
        steps.append(1)
        if len(steps) == 2:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the first reply
        return real(self)

    monkeypatch.setattr(Engine, "step", interrupted_once)
    feed(monkeypatch, ["Hi", "Oh"])
    assert main(["chat", "--model", str(llama_run), "--max-new-tokens", "4", "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert "interrupted" in err and err.count("tokens/s") == 2 and len(steps) > 2


def test_history_is_kept_and_the_oldest_turns_leave_first(llama_run):
    lm = scratchllm.load_pretrained(llama_run)  # block_size 32: a few turns fill it
    session = ChatSession(lm, sampling=Sampling(max_tokens=4, temperature=0))
    "".join(session.reply("Hi"))
    assert [m["role"] for m in session.history] == ["user", "assistant"] and session.last.dropped_turns == 0
    for _ in range(4):
        "".join(session.reply("To be"))
    assert session.last.dropped_turns >= 1
    assert session.last.prompt_tokens <= 32 - 4
    with pytest.raises(ScratchLLMError, match="send a shorter one"):
        "".join(session.reply("words " * 100))


def test_chat_bad_input(capsys, llama_run, tmp_path):
    one_line_error(capsys, ["chat", "--model", str(llama_run), "--prompt", "words " * 100], "send a shorter one")
    one_line_error(capsys, ["chat", "--model", str(llama_run), "--prompt", "   "], "the message is empty")
    one_line_error(capsys, ["chat", "--model", str(tmp_path / "none.gguf"), "--prompt", "hi"], "does not exist")
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 10)
    one_line_error(capsys, ["chat", "--model", str(tmp_path / "bad.gguf"), "--prompt", "hi"], "truncated or corrupt")
    (tmp_path / "text.gguf").write_text("not a model")
    one_line_error(capsys, ["chat", "--model", str(tmp_path / "text.gguf"), "--prompt", "hi"], "is not a GGUF file")
    one_line_error(capsys, ["chat", "--model", str(llama_run), "--prompt", "hi", "--temperature", "-1"],
                   "--temperature must be a number >= 0 (0: greedy), got -1.0")
    one_line_error(capsys, ["chat", "--model", "smollm2-135m-instruct-typo", "--prompt", "hi"], "does not exist")


def test_a_template_that_fails_to_render_is_one_line(capsys, llama_run, tmp_path):
    gguf = tmp_path / "m.gguf"
    assert main(["convert", str(llama_run), "--to-gguf", str(gguf), "--type", "f32"]) == 0
    from scratchllm.interop.gguf import read_gguf, write_gguf

    g = read_gguf(gguf)
    write_gguf(tmp_path / "bad-template.gguf", g.hf_config, g.tensors, g.tokenizer, file_type="f32",
               chat_template="{{ raise_exception('this template refuses') }}")
    capsys.readouterr()
    one_line_error(capsys, ["chat", "--model", str(tmp_path / "bad-template.gguf"), "--prompt", "hi"], "this template refuses")


def test_convert_to_gguf_round_trips(capsys, llama_run, tmp_path):
    ours = scratchllm.load_pretrained(llama_run)
    idx = torch.tensor([ours.tokenizer.encode("ROMEO: what light")])
    for kind, tolerance in (("f32", 0.0), ("q8_0", 0.1)):
        out = tmp_path / f"m-{kind}.gguf"
        assert main(["convert", str(llama_run), "--to-gguf", str(out), "--type", kind]) == 0
        back = scratchllm.load_pretrained(out)
        assert back.tokenizer.encode("ROMEO: what light") == idx[0].tolist()
        with torch.no_grad():
            assert (back.model(idx) - ours.model(idx)).abs().max() <= tolerance
    capsys.readouterr()
    one_line_error(capsys, ["convert", str(llama_run), "--to-gguf", str(tmp_path / "m-f32.gguf")], "exists")
    one_line_error(capsys, ["convert", str(llama_run), "--to-gguf", str(tmp_path)], "is a folder")


def test_convert_to_gguf_refuses_what_it_cannot_hold(capsys, trained, tmp_path):
    run = trained("gpt-char-baby")
    capsys.readouterr()
    one_line_error(capsys, ["convert", str(run), "--to-gguf", str(tmp_path / "g.gguf")], "GGUF holds byte-level BPE")
