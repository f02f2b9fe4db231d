"""Where an answer's token2wav runs: on its own thread (`SpeechWorker`), or between the decode steps
(`InlineSpeech`); both take codes and hand back audio chunks through the same calls. Inline, in the app,
each chunk's DiT window is handed out as a step instead (`windows()`), so that the model thread solves the
windows of several answers together (model/engine/batched_step.py).

On a GPU the worker thread runs the DiT windows on their own CUDA stream, so the thinker and talker never wait
for one. On a CPU it does not pay: each thread's Python between torch ops needs the GIL, and the two threads
hand it back and forth at every op; on the tiny model a 48-frame window took 3x as long beside the decode
loop as alone, and the decode loop slowed too (docs/performance.md). So the speech runs inline there.

Which chunks are cut depends only on the codes (the stream's schedule), never on when they arrived, so both
give the same audio, sample for sample (tests/test_speech_worker.py). The thread takes its codes one at a time,
so a cut-in waits for the chunk being decoded at most, never for a backlog; and the answer's thread never
waits on it for long (`rest` hands control back while a chunk is being made).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from model.engine.batched_step import Step
from model.engine.family import Vocoder as StreamingToken2Wav  # any family's vocoder stream


def start_speech(stream: StreamingToken2Wav, threaded: bool | None = None, windows: bool = False) -> SpeechWorker | InlineSpeech:
    """`threaded`: None picks the thread on CUDA only (see above). `windows`: inline, each chunk's window is
    handed out as a step (`windows()`) for the model thread to solve with other answers', where the
    family's stream can (`batches_windows`)."""
    if threaded is None:
        threaded = stream.device.type == "cuda"
    if threaded:
        return SpeechWorker(stream)
    return InlineSpeech(stream, windows and stream.batches_windows)


class InlineSpeech:
    """The answer's own thread decodes each chunk as soon as its codes are fed; or, with `windows`, hands
    each chunk's window out (`windows()`) and takes its audio once it has been solved."""

    def __init__(self, stream: StreamingToken2Wav, windows: bool = False):
        self._stream = stream
        self._windows = windows
        self._ready: list[np.ndarray] = []
        self.ended = False

    def feed(self, codes: Sequence[int]) -> None:
        if self._windows:
            self._stream.add(codes)
        else:
            self._ready += self._stream.feed(codes)

    def finish(self) -> None:
        if self._windows:
            self._stream.end()
        else:
            self._ready += self._stream.flush()

    def windows(self) -> Iterator[Step]:
        """The windows the codes fed so far make ready, one at a time: each must have run before the next is
        asked for (the model thread's scheduler runs it); its audio is then ready."""
        if not self._windows:
            return
        while (step := self._stream.next_window()) is not None:
            yield step
            if not step.ran:
                raise RuntimeError("a speech window was not solved before its answer went on")
            self._ready.append(step.result)

    def ready(self) -> list[np.ndarray]:
        chunks, self._ready = self._ready, []
        return chunks

    def rest(self, stop: threading.Event) -> Iterator[np.ndarray | None]:
        self.ended = True
        yield from self.ready()

    def stop(self) -> None:
        self._ready = []


_FINISH = object()  # the talker has ended: decode the rest
_STOP = object()  # the answer was cut short: drop the rest
_DONE = object()  # the worker has emitted its last chunk


class SpeechWorker:
    """Owns one answer's token2wav thread. `feed`, `finish`, `ready`, `rest` and `stop` are for the answer's
    own thread; the worker only reads its inbox and writes its outbox."""

    def __init__(self, stream: StreamingToken2Wav):
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = threading.Event()  # seen by the thread between two chunks
        self._ended = False
        self._thread = threading.Thread(
            target=self._run,
            args=(stream, torch.get_num_threads()),
            name="token2wav",
            daemon=True,
        )
        self._thread.start()

    # ------------------------------------------------------------------ the answer's thread

    def feed(self, codes: Sequence[int]) -> None:
        self._inbox.put(list(codes))

    def finish(self) -> None:
        """No more codes: the worker decodes the rest of the answer and ends."""
        self._inbox.put(_FINISH)

    def windows(self) -> Iterator[Step]:
        """None: this thread solves its windows itself, on its own stream."""
        return iter(())

    def ready(self) -> list[np.ndarray]:
        """The chunks decoded since the last call, without waiting."""
        chunks = []
        while not self._ended:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                break
            chunks.extend(self._take(item))
        return chunks

    def rest(self, stop: threading.Event, poll_seconds: float = 0.02) -> Iterator[np.ndarray | None]:
        """After `finish`: each chunk as it is decoded, to the last, and None each `poll_seconds` that none
        came (the caller can serve others meanwhile). Returns early once `stop` is set."""
        while not self._ended and not stop.is_set():
            try:
                item = self._outbox.get(timeout=poll_seconds)
            except queue.Empty:
                yield None
                continue
            yield from self._take(item)

    def stop(self) -> None:
        """Ends the thread (what it has not decoded is dropped) and waits for it, which is at most the chunk it
        is decoding: an answer never leaves a worker behind."""
        self._stopping.set()
        self._inbox.put(_STOP)
        self._thread.join()
        self._ended = True

    @property
    def ended(self) -> bool:
        """The last chunk was taken (or the worker failed, or was stopped)."""
        return self._ended

    def _take(self, item) -> list[np.ndarray]:
        if item is _DONE:
            self._ended = True
            return []
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return [item]

    # ------------------------------------------------------------------ the worker's thread

    def _run(self, stream: StreamingToken2Wav, threads: int) -> None:
        torch.set_num_threads(threads)  # a new thread starts from the process default, not the caller's setting
        device = stream.device
        side_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        try:
            with torch.no_grad(), torch.cuda.stream(side_stream) if side_stream else contextlib.nullcontext():
                while True:
                    item = self._inbox.get()
                    codes = []
                    # Everything already waiting is taken at once: the chunks cut are the same either way.
                    while isinstance(item, list):
                        codes.extend(item)
                        try:
                            item = self._inbox.get_nowait()
                        except queue.Empty:
                            item = None
                    if item is _STOP:
                        return
                    for code in codes:  # a code completes at most one chunk: a stop never waits for a backlog
                        if self._stopping.is_set():
                            return
                        for chunk in stream.feed([code]):
                            self._outbox.put(chunk)
                    if item is _FINISH and not self._stopping.is_set():
                        for chunk in stream.flush():
                            self._outbox.put(chunk)
                        self._outbox.put(_DONE)
                        return
        except Exception as error:  # noqa: BLE001 -- any failure is handed to the answer's thread, which raises it
            self._outbox.put(error)
