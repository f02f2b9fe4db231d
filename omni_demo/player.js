// The speech player (js_on_load of a gr.HTML component). Reads the append-only feed in props.value (see
// omni_demo/playback.py) and plays its 24 kHz PCM chunks on one AudioContext, by the playout rule of
// omni_demo/playout.py: `PlaybackClock` below is that file's class, line for line (the numbers come from it
// too, in RULE, which the server puts before this script). It stops at once on "stop". Counters and
// wall-clock times live on window.omniPlayer, for people debugging and for the tests.
const SAMPLE_RATE = 24000;

function runStart(now, runArrival, played, produced, lastChunk, rate, expected) {
  const atOnce = Math.max(now, runArrival) + RULE.lead;  // a held run never starts in the past
  if (rate === null) return Infinity;  // wait for a measure
  if (rate >= 1) return atOnce;
  if (produced + lastChunk > expected) expected = 2 * produced;  // longer than the answers before
  const toCome = expected - produced, toPlay = expected - played;
  const planned = now + toCome / (rate * RULE.safety) - (toPlay - lastChunk);
  return Math.max(atOnce, Math.min(planned, runArrival + RULE.lead + RULE.maxHold));
}

class PlaybackClock {
  constructor(pace) {
    this.pace = pace;  // {rate, length} of the last answers, or null
    this.chunks = [];  // each chunk's seconds
    this.starts = [];  // when each starts; a held run's move until it starts (Infinity: unknown yet)
    this.runs = [];    // the index of each run's first chunk
    this.runArrival = 0;
    this.made = [];    // when each chunk was made: seconds after the first (the feed says)
    this.produced = 0;
  }

  add(seconds, now, made) {
    this.made.push(made);
    this.produced += seconds;
    const end = this.end_();
    this.chunks.push(seconds);
    const runs = this.runs;
    if (runs.length && this.starts[runs[runs.length - 1]] <= now && end >= now + RULE.lead) {
      this.starts.push(end);  // playing: straight after
      return;
    }
    if (!runs.length || this.starts[runs[runs.length - 1]] <= now) {  // silent: a new run
      runs.push(this.chunks.length - 1);
      this.runArrival = now;
    }
    this.starts.push(Infinity);
    this.place(this.planned(now, seconds));
  }

  end(now) {
    if (this.runs.length && this.starts[this.runs[this.runs.length - 1]] > now + RULE.lead) this.place(now + RULE.lead);
  }

  heard(at) {
    let sum = 0;
    this.chunks.forEach((seconds, i) => { sum += Math.min(Math.max(at - this.starts[i], 0), seconds); });
    return sum;
  }

  underruns() {
    return this.runs.slice(1).map((first) => this.starts[first] - this.starts[first - 1] - this.chunks[first - 1]);
  }

  measuredRate() {
    const made = this.made[this.made.length - 1];
    if (this.chunks.length < 2 || made <= 0) return null;
    return (this.produced - this.chunks[0]) / made;
  }

  end_() {
    const n = this.chunks.length;
    return n ? this.starts[n - 1] + this.chunks[n - 1] : -Infinity;
  }

  planned(now, lastChunk) {
    let rate = this.measuredRate();
    if (rate === null && this.pace) rate = this.pace.rate;
    const expected = this.pace ? this.pace.length : RULE.defaultAnswer;
    const played = this.chunks.slice(0, this.runs[this.runs.length - 1]).reduce((a, b) => a + b, 0);
    return runStart(now, this.runArrival, played, this.produced, lastChunk, rate, expected);
  }

  place(start) {
    for (let i = this.runs[this.runs.length - 1]; i < this.chunks.length; i++) {
      this.starts[i] = start;
      start += this.chunks[i];
    }
  }
}

const player = {
  PlaybackClock,     // for tests: the rule, without the audio
  context: null,
  answer: null,      // id of the answer being played
  clock: null,       // its PlaybackClock
  nextLine: 0,       // number of the next feed line to take
  linesLost: 0,      // feed lines never seen (the value kept too few): stays 0
  sources: [],       // the current answer's: {source, start} per chunk, null while unscheduled
  buffers: [],
  chunks: 0,         // chunks received, all answers
  samples: 0,
  stops: 0,
  // per answer: {id, pace, chunks, samples, energy, firstArrival, firstStart, underruns, underrunSeconds,
  // stoppedAt, ended} (times: wall-clock milliseconds), and arrivals: [clock seconds, chunk seconds] each
  answers: [],
  playing() {
    const answer = this.answers[this.answers.length - 1];
    return !!this.clock && answer.stoppedAt === null && now() < this.clock.end_();
  },
};
window.omniPlayer = player;

function now() {
  return performance.now() / 1000;  // the clock's time; the audio context's is converted when scheduling
}

function audioContext() {
  if (!player.context) player.context = new AudioContext({ sampleRate: SAMPLE_RATE });
  if (player.context.state === "suspended") player.context.resume();
  return player.context;
}
// Browsers start audio only after a user gesture; the Record click is one.
document.addEventListener("pointerdown", audioContext, { capture: true });

// Gradio's microphone asks for `{audio: true}`: the browser's own echo cancellation, noise suppression and
// gain control are then its defaults, which differ between browsers. Ask for them by name. (The server's
// canceller, omni_demo/echo.py, is what knows the speech this page plays.) What was asked and what the
// browser granted stay on window.omniPlayer.microphone.
const MICROPHONE = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
if (navigator.mediaDevices && !navigator.mediaDevices.omniAsked) {
  const getUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    if (constraints && constraints.audio === true) constraints = { ...constraints, audio: { ...MICROPHONE } };
    const stream = await getUserMedia(constraints);
    const track = stream.getAudioTracks()[0];
    if (track) player.microphone = { asked: constraints.audio, granted: track.getSettings() };
    return stream;
  };
  navigator.mediaDevices.omniAsked = true;
}

function current() {
  return player.answers[player.answers.length - 1];
}

function silence() {
  for (const scheduled of player.sources) {
    if (scheduled) try { scheduled.source.stop(); } catch (error) { /* already ended */ }
  }
  player.sources = [];
  player.buffers = [];
}

function stopAll() {
  silence();
  const answer = current();
  if (answer && answer.stoppedAt === null) {
    answer.stoppedAt = Date.now();
    player.stops += 1;
  }
  show("stopped");
}

function decode(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  const buffer = audioContext().createBuffer(1, pcm.length, SAMPLE_RATE);
  const channel = buffer.getChannelData(0);
  let energy = 0;
  for (let i = 0; i < pcm.length; i++) {
    channel[i] = pcm[i] / 32768;
    energy += channel[i] * channel[i];
  }
  return { buffer, energy };
}

function sync() {
  // Each chunk plays where the clock says; a held run's chunks are scheduled again when its start moves.
  const context = audioContext(), offset = context.currentTime - now(), clock = player.clock;
  clock.starts.forEach((start, i) => {
    const scheduled = player.sources[i];
    if (scheduled && scheduled.start === start) return;
    if (scheduled) try { scheduled.source.stop(); } catch (error) { /* already ended */ }
    player.sources[i] = null;
    if (!isFinite(start)) return;
    const source = context.createBufferSource();
    source.buffer = player.buffers[i];
    source.connect(context.destination);
    source.start(Math.max(context.currentTime, start + offset));
    player.sources[i] = { source, start };
  });
  const answer = current(), wallOffset = Date.now() - now() * 1000;
  if (isFinite(clock.starts[0])) answer.firstStart = clock.starts[0] * 1000 + wallOffset;
  const gaps = clock.underruns();
  answer.underruns = gaps.length;
  answer.underrunSeconds = gaps.reduce((a, b) => a + b, 0);
}

function show(state) {
  element.dataset.state = state;
  const label = element.querySelector(".omni-player");
  if (!label) return;
  const texts = {
    buffering: "⏳ Buffering the speech, so that it plays without gaps…",
    playing: "🔊 Speaking.",
    stopped: "🔇 Stopped.",
  };
  label.textContent = texts[state] || "🔈 Speech plays here as it is generated.";
}

function tick() {
  // What the player is doing now, for the label: the clock knows when each run starts and ends.
  const answer = current(), clock = player.clock;
  if (!answer || !clock || answer.stoppedAt !== null) return;
  const t = now(), runs = clock.runs;
  if (!runs.length) return;
  const held = clock.starts[runs[runs.length - 1]] > t;
  show(held ? "buffering" : t < clock.end_() ? "playing" : "idle");
}
setInterval(tick, 200);

function read() {
  // The value is a header and the feed's last numbered lines (omni_demo/playback.py): take each line not
  // taken yet, by its number, so an update that the script never saw costs nothing.
  const value = props.value || "";
  const headerEnd = value.indexOf("\n");
  if (headerEnd < 0 || !value.startsWith("answer ")) return;
  const header = value.slice(7, headerEnd).split(" ");
  const id = header[0];
  if (id !== player.answer) {
    silence();  // a new answer replaces whatever was left of the last one
    const pace = header[1] === "pace" ? { rate: parseFloat(header[2]), length: parseFloat(header[3]) } : null;
    player.answer = id;
    player.clock = new PlaybackClock(pace);
    player.nextLine = 0;
    player.answers.push({ id, pace, chunks: 0, samples: 0, energy: 0, firstArrival: null, firstStart: null,
                          underruns: 0, underrunSeconds: 0, stoppedAt: null, ended: false, arrivals: [] });
    show("idle");
  }
  const answer = current();
  let start = headerEnd + 1;
  for (let end = value.indexOf("\n", start); end >= 0; start = end + 1, end = value.indexOf("\n", start)) {
    const space = value.indexOf(" ", start);
    const number = parseInt(value.slice(start, space), 10);
    if (number < player.nextLine) continue;
    if (number > player.nextLine) player.linesLost += number - player.nextLine;  // never expected
    player.nextLine = number + 1;
    const line = value.slice(space + 1, end);
    if (line.startsWith("pcm ") && answer.stoppedAt === null) {
      const made = line.indexOf(" ", 4);  // "pcm <ms after the first chunk was made> <base64>"
      const { buffer, energy } = decode(line.slice(made + 1));
      player.buffers.push(buffer);
      const at = now();
      player.clock.add(buffer.duration, at, parseInt(line.slice(4, made), 10) / 1000);
      answer.arrivals.push([at, buffer.duration]);
      if (answer.firstArrival === null) answer.firstArrival = Date.now();
      answer.chunks += 1;
      answer.samples += buffer.length;
      answer.energy += energy;
      player.chunks += 1;
      player.samples += buffer.length;
      sync();
    } else if (line === "stop") {
      stopAll();
    } else if (line === "end") {
      answer.ended = true;
      if (answer.stoppedAt === null) {
        player.clock.end(now());
        sync();
      }
    }
  }
  tick();
}

watch("value", read);
read();
