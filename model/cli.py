"""The streaming engine on the command line: one user turn in, the answer's text and speech out.

    python -m model.cli --model tiny --input assets/question.wav --out answer.wav
    python -m model.cli --model Qwen/Qwen2.5-Omni-7B --text "Hello" --greedy --seed 0 --json
    python -m model.cli --model tiny-qwen3-omni --input assets/question.wav --out answer.wav

The text is printed as it streams, and a line on stderr for each piece of speech as it is made (with
--json, the text streams to stderr too, and stdout gets one JSON object at the end with the text, the
thinker's tokens, the talker's codes and the timings); the 24 kHz speech goes to --out as it is made. Bad
input ends with exit code 2 and a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from model import constants as C

EXIT_USAGE = 2


class CliError(Exception):
    """Bad input: its message is printed as the one line the user sees."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model.cli",
        description="One turn of Qwen2.5-Omni or Qwen3-Omni through the streaming engine: text to stdout, speech to --out.",
    )
    parser.add_argument("--model", default="auto",
                        help="checkpoint directory, hub id, 'tiny', 'tiny-qwen3-omni' or 'auto' (default)")
    parser.add_argument("--text", help="the user's text; it follows the input files in the turn")
    parser.add_argument("--input", nargs="+", action="extend", default=[], metavar="FILE",
                        help="audio, image or video files, in the order given")
    parser.add_argument("--voice", help="speaker (default: the model's, Chelsie for Qwen2.5-Omni, Ethan for Qwen3-Omni)")
    parser.add_argument("--text-only", action="store_true", help="answer in text, no speech")
    parser.add_argument("--greedy", action="store_true",
                        help="greedy talker too (it keeps its repetition penalty); the thinker is greedy anyway")
    parser.add_argument("--seed", type=int, help="seeds the talker's sampling and token2wav's noise")
    parser.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                        help="thinker tokens at most (default 256, as the page's; about a minute of speech)")
    parser.add_argument("--live", action="store_true", help="feed the files as a live stream, in real time order")
    parser.add_argument("--out", metavar="WAV", help="write the speech here as it is made (24 kHz float WAV)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the streamed text")
    parser.add_argument("--system", metavar="PROMPT", help="system prompt (Qwen2.5-Omni speaks only with the default one)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if there is one")
    return parser


def read_parts(files: list[str], text: str | None) -> list:
    """The user turn: the files' parts in order, then the text."""
    from model.inputs.conversation import Text
    from model.inputs.media import MediaError
    from model.inputs.message import parts_from_files

    try:
        parts = parts_from_files(files)
    except (MediaError, OSError) as error:
        raise CliError(str(error)) from error
    if text and text.strip():
        parts.append(Text(text))
    if not parts:
        raise CliError("Nothing to answer: give --text and/or --input FILE.")
    return parts


def feed_live(session, parts: list) -> None:
    """--live: the turn goes in as a live stream (block-wise prefill), files in real time order."""
    from model.inputs.conversation import Text

    if any(isinstance(p, Text) for p in parts):
        raise CliError("--live streams audio and video files; a live turn takes no --text.")
    try:
        session.feed_live(*parts)
    except ValueError as error:
        raise CliError(str(error)) from error


def answer_settings(args, family):
    from model.engine.sampling import Sampling
    from model.session import AnswerSettings

    # Greedy keeps the talker's repetition penalty, as transformers' generate does.
    talker = Sampling(greedy=True, repetition_penalty=family.talker.repetition_penalty) if args.greedy else family.talker
    return AnswerSettings(
        voice=args.voice or family.default_voice,
        text_only=args.text_only,
        max_new_tokens=args.max_new_tokens,
        talker=talker,  # the thinker stays greedy, the checkpoint's default
        seed=args.seed,
        noise_seed=args.seed,
    )


def open_wav(path: str):
    """24 kHz mono, float samples as the engine made them (a format from the name, WAV if it names none)."""
    import soundfile

    kind = Path(path).suffix[1:].upper()
    kind = kind if kind in soundfile.available_formats() else "WAV"
    subtype = "FLOAT" if soundfile.check_format(kind, "FLOAT") else None
    try:
        return soundfile.SoundFile(path, "w", C.OUTPUT_SAMPLE_RATE, 1, subtype, format=kind)
    except (soundfile.SoundFileError, OSError) as error:
        raise CliError(f"Cannot write {path}: {error}") from error


def run(args) -> int:
    from model.loading import LoadError, load_omni
    from model.session import AnswerDone, AudioChunk, ContextTrimmed, OmniSession, TextDelta

    if args.max_new_tokens < 1:
        raise CliError("--max-new-tokens must be at least 1.")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise CliError(f"Cannot write {args.out}: its folder does not exist.")
    parts = read_parts(args.input, args.text)  # before the model: bad files fail fast
    try:
        loaded = load_omni(args.model, args.device)
    except LoadError as error:
        raise CliError(str(error)) from error
    family = loaded.family
    if args.voice is not None and args.voice not in loaded.voices:
        raise CliError(f"Unknown voice {args.voice!r}; this checkpoint has {', '.join(loaded.voice_names)}.")
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    system = family.system_prompt if args.system is None else args.system
    if family.prompt_is_fixed and system != family.system_prompt and not args.text_only:
        print("warning: speech may not work with a system prompt other than the default one.", file=sys.stderr)
    if args.out and args.text_only:
        print(f"note: --text-only makes no speech; {args.out} is not written.", file=sys.stderr)

    session = OmniSession(loaded, system_prompt=system)
    try:
        if args.live:
            feed_live(session, parts)
        else:
            session.add_user_turn(*parts)
    except ValueError as error:  # e.g. an input longer than the model's positions
        raise CliError(str(error)) from error
    prompt_length = session.thinker.length

    wav = open_wav(args.out) if args.out and not args.text_only else None
    text_out = sys.stderr if args.json else sys.stdout  # stdout holds only the JSON object then
    done, speech_seconds, chunks = None, 0.0, 0
    try:
        for event in session.respond(answer_settings(args, family)):
            if isinstance(event, TextDelta):
                print(event.text, end="", file=text_out, flush=True)
            elif isinstance(event, AudioChunk):
                chunks += 1
                speech_seconds += len(event.samples) / event.sample_rate
                text_out.flush()
                print(f"\n[speech {chunks}: {speech_seconds:.2f} s so far]", file=sys.stderr, flush=True)
                if wav is not None:
                    wav.write(event.samples)
                    wav.flush()
            elif isinstance(event, ContextTrimmed):
                print(f"note: {event.message}", file=sys.stderr)
            elif isinstance(event, AnswerDone):
                done = event
    finally:
        if wav is not None:
            wav.close()

    t = done.timings
    if args.json:
        print(file=sys.stderr, flush=True)
        print(json.dumps({
            "text": done.text,
            "tokens": done.tokens,
            "codes": done.codes,
            "audio_seconds": t.audio_seconds,
            "prompt_length": prompt_length,
            "timings": dataclasses.asdict(t),
        }))
    else:
        print(flush=True)
        first_audio = "-" if t.first_audio is None else f"{t.first_audio:.2f} s"
        print(f"[{t.tokens} tokens, {t.codes} codes, {t.audio_seconds:.2f} s of speech; first text "
              f"{t.first_text:.2f} s, first audio {first_audio}, total {t.total:.2f} s]", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0), or a usage error (2) argparse has explained
        return int(stop.code or 0)
    try:
        return run(args)
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # config warnings are not for the user
    sys.exit(main())
