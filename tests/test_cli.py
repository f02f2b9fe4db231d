"""`python -m model.cli` on the tiny checkpoint: its JSON and wav equal transformers' own generate (greedy),
the options do what they say, and bad input ends with exit code 2 and one line on stderr."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from model import constants as C
from model import loading
from model.cli import main
from model.families.qwen2_5_omni.reference import TalkerSampling, reference_generate
from model.inputs import cases
from model.session import OmniSession

ROOT = Path(__file__).resolve().parent.parent
MAX_NEW_TOKENS = 12
SEED = 0
SAMPLES_PER_CODE = C.OUTPUT_SAMPLE_RATE // C.CODES_PER_SECOND  # 480

CASES = {  # CLI input -> the same conversation for transformers
    "text": (["--text", cases.FIRST_QUESTION], cases.text_case),
    "audio": (["--input", str(cases.SPOKEN_QUESTION)], cases.audio_case),
    "video_with_sound": (["--input", str(cases.VIDEO_WITH_SOUND)], cases.video_with_sound_case),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return str(loading.ensure_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny"))


@pytest.fixture(scope="module")
def loaded_once(checkpoint):
    return loading.load_omni(checkpoint, "cpu")


@pytest.fixture(autouse=True)
def load_once(request, monkeypatch):
    """In-process runs load the tiny checkpoint once (through load_omni itself); anything else loads for real."""
    real = loading.load_omni

    def load(spec, device=None):
        if spec == request.getfixturevalue("checkpoint") and str(device) == "cpu":
            return request.getfixturevalue("loaded_once")
        return real(spec, device)

    monkeypatch.setattr(loading, "load_omni", load)


@pytest.fixture(scope="module")
def references(loaded_once):
    results = {}

    def get(name):
        if name not in results:
            results[name] = reference_generate(
                loaded_once,
                CASES[name][1](),
                max_new_tokens=MAX_NEW_TOKENS,
                talker=TalkerSampling(greedy=True),
                noise_seed=SEED,
            )
        return results[name]

    return get


def cli(checkpoint, *argv) -> list[str]:
    return ["--model", checkpoint, "--device", "cpu", *argv]


def run_json(capsys, checkpoint, *argv) -> dict:
    assert main(cli(checkpoint, *argv, "--json")) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1  # only the JSON object: no streamed text
    return json.loads(out)


def greedy(*argv) -> list[str]:
    return [*argv, "--greedy", "--max-new-tokens", str(MAX_NEW_TOKENS), "--seed", str(SEED)]


@pytest.mark.parametrize("case", list(CASES))
def test_json_equals_transformers(checkpoint, references, capsys, tmp_path, case):
    out = tmp_path / "answer.wav"
    result = run_json(capsys, checkpoint, *greedy(*CASES[case][0]), "--out", str(out))
    reference = references(case)
    assert result["tokens"] == reference.thinker_tokens
    assert result["codes"] == reference.talker_codes and result["codes"]
    assert result["text"] == reference.text
    assert result["prompt_length"] == len(reference.prompt_ids)
    timings = result["timings"]
    assert set(timings) == {"first_text", "first_audio", "total", "tokens", "codes", "audio_seconds"}
    assert (timings["tokens"], timings["codes"]) == (len(result["tokens"]), len(result["codes"]))
    assert 0 <= timings["first_text"] <= timings["first_audio"] <= timings["total"]
    samples, rate = soundfile.read(out, dtype="float32")
    assert rate == C.OUTPUT_SAMPLE_RATE and samples.ndim == 1
    assert len(samples) == SAMPLES_PER_CODE * len(result["codes"])
    assert result["audio_seconds"] == pytest.approx(len(samples) / C.OUTPUT_SAMPLE_RATE)
    # 12 codes fit one token2wav chunk, and --seed fixes its noise: the very samples transformers makes.
    np.testing.assert_array_equal(samples, reference.waveform)


def test_text_only_makes_no_codes_and_no_wav(checkpoint, capsys, tmp_path):
    out = tmp_path / "answer.wav"
    result = run_json(capsys, checkpoint, *greedy(*CASES["text"][0]), "--text-only", "--out", str(out))
    assert len(result["tokens"]) == MAX_NEW_TOKENS
    assert result["codes"] == [] and result["audio_seconds"] == 0
    assert result["timings"]["first_audio"] is None
    assert not out.exists()


def test_sampled_talker_is_reproducible_with_a_seed(checkpoint, capsys):
    argv = [*CASES["text"][0], "--max-new-tokens", "6", "--seed", "7"]
    first = run_json(capsys, checkpoint, *argv)
    second = run_json(capsys, checkpoint, *argv)
    assert first["codes"] and (first["tokens"], first["codes"]) == (second["tokens"], second["codes"])


def test_another_system_prompt_warns(checkpoint, capsys):
    assert main(cli(checkpoint, "--text", "Hi", "--system", "Be brief.", "--max-new-tokens", "2")) == 0
    captured = capsys.readouterr()
    assert "speech may not work" in captured.err
    assert captured.out.endswith("\n")


def test_entry_point_streams_text_and_writes_the_wav(checkpoint, references, tmp_path):
    """A real `python -m model.cli` (the module's __main__), not main() in this process."""
    out = tmp_path / "answer.wav"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}
    run = subprocess.run(
        [sys.executable, "-m", "model.cli", *cli(checkpoint, *greedy(*CASES["text"][0]), "--out", str(out))],
        cwd=ROOT, env=env, capture_output=True, encoding="utf-8", timeout=300,
    )
    assert run.returncode == 0, run.stderr
    reference = references("text")
    assert run.stdout == reference.text + "\n"
    samples, rate = soundfile.read(out, dtype="float32")
    assert rate == C.OUTPUT_SAMPLE_RATE and len(samples) == SAMPLES_PER_CODE * len(reference.talker_codes)
    assert "Traceback" not in run.stderr


def test_entry_point_bad_input_exits_2_without_traceback():
    run = subprocess.run(
        [sys.executable, "-m", "model.cli", "--model", "tiny", "--input", "/no/such/file.wav"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["error: File not found (file.wav)."]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--input", "/no/such/file.wav"], "File not found (file.wav)."),
        (["--input", str(ROOT / "assets" / "corrupt.wav")], "corrupt.wav"),
        (["--input", str(ROOT / "README.md")], "not an image, audio or video file"),
        (["--text", "Hi", "--voice", "Nobody"], "Unknown voice 'Nobody'"),
        ([], "Nothing to answer"),
        (["--text", "   "], "Nothing to answer"),
        (["--text", "Hi", "--out", "/no/such/folder/answer.wav"], "folder does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(checkpoint, capsys, argv, message):
    assert main(cli(checkpoint, *argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.parametrize("model", ["not-a-checkpoint", "missing"])
def test_a_model_that_does_not_load_exits_2(tmp_path, capsys, model):
    directory = tmp_path / model
    if model == "not-a-checkpoint":
        directory.mkdir()
        (directory / "notes.txt").write_text("hello")
    assert main(["--model", str(directory), "--text", "Hi", "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert ("is not a Qwen2.5-Omni or Qwen3-Omni checkpoint" if model == "not-a-checkpoint" else "neither a checkpoint") in lines[0]


@pytest.mark.parametrize("case", ["audio", "video_with_sound"])
def test_live_equals_the_engine_fed_live(checkpoint, capsys, case):
    """--live goes through the block-wise path: the same answer as a session fed the file live."""
    from model.engine.sampling import Sampling
    from model.inputs.conversation import Audio, Video
    from model.inputs.media import load_audio, load_video
    from model.session import AnswerSettings

    argv, _ = CASES[case]
    live = ["--live", "--greedy", "--json", "--seed", str(SEED), "--max-new-tokens", str(MAX_NEW_TOKENS)]
    assert main(cli(checkpoint, *argv, *live)) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    session = OmniSession(loading.load_omni(checkpoint, "cpu"))
    path = Path(argv[1])
    session.feed_live(Audio(load_audio(path)) if case == "audio" else Video(load_video(path)))
    *_, done = session.respond(
        AnswerSettings(
            max_new_tokens=MAX_NEW_TOKENS,
            talker=Sampling(greedy=True, repetition_penalty=C.TALKER_REPETITION_PENALTY),
            seed=SEED,
            noise_seed=SEED,
        )
    )
    assert result["tokens"] == done.tokens and result["codes"] == done.codes


def test_live_takes_no_text(checkpoint, capsys):
    assert main(cli(checkpoint, "--input", str(cases.SPOKEN_QUESTION), "--text", "hi", "--live")) == 2
    assert "takes no --text" in capsys.readouterr().err


def test_json_streams_its_progress_to_stderr(checkpoint, loaded_once, capsys):
    """With --json, stdout holds the one JSON object; the text as it streams and a line per piece of speech
    go to stderr, so a long answer is never silent for minutes."""
    assert main(cli(checkpoint, "--text", "Tell me a story.", "--greedy", "--max-new-tokens", "40", "--json")) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # the whole of stdout
    assert set(result) >= {"text", "tokens", "codes", "timings"}
    streamed = re.sub(r"\n\[speech \d+: [0-9.]+ s so far\]\n", "", captured.err)
    assert result["text"] in streamed  # the text, as it streamed, around the speech lines
    speech = re.findall(r"\[speech (\d+): ([0-9.]+) s so far\]", captured.err)
    assert len(speech) >= 2 and [int(n) for n, _ in speech] == list(range(1, len(speech) + 1))
    assert float(speech[-1][1]) == pytest.approx(result["audio_seconds"], abs=0.01)



def test_qwen3_omni_answers_as_transformers(qwen3_dir, qwen3_loaded, capsys, tmp_path, monkeypatch):
    """The same command line serves Qwen3-Omni: its default voice (Ethan) and prompt, no prompt warning, and
    the answer transformers gives, frames of 16 codes and their speech."""
    from model.families.qwen3_omni import loading as Q3
    from model.families.qwen3_omni.reference import reference_generate_qwen3
    from model.inputs.conversation import Audio, Conversation
    from model.inputs.media import load_audio

    monkeypatch.setattr(loading, "load_omni", lambda spec, device=None: qwen3_loaded)
    out = tmp_path / "answer.wav"
    result = run_json(capsys, str(qwen3_dir), *greedy("--input", str(cases.SPOKEN_QUESTION)), "--system", Q3.SYSTEM_PROMPT,
                      "--out", str(out))
    conversation = Conversation(Q3.SYSTEM_PROMPT)
    conversation.add_user(Audio(load_audio(cases.SPOKEN_QUESTION)))
    reference = reference_generate_qwen3(qwen3_loaded, conversation, voice="Ethan", max_new_tokens=MAX_NEW_TOKENS)
    assert (result["tokens"], result["codes"]) == (reference.thinker_tokens, reference.talker_codes)
    samples, rate = soundfile.read(out, dtype="float32")
    assert rate == C.OUTPUT_SAMPLE_RATE and len(samples) == len(reference.waveform) == 1920 * len(result["codes"]) - 555
    assert main(cli(str(qwen3_dir), "--text", "Hi", "--system", "Be brief.", "--max-new-tokens", "2")) == 0
    assert "speech may not work" not in capsys.readouterr().err  # any prompt speaks
