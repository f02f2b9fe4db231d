// The speech player (js_on_load of a gr.HTML component). Reads the append-only feed in props.value (see
// omni_demo/playback.py), schedules 24 kHz PCM chunks back to back on one AudioContext and stops at once on
// "stop". Counters and wall-clock times live on window.omniPlayer, for people debugging and for the tests.
const SAMPLE_RATE = 24000;
const LEAD_SECONDS = 0.05;

const player = {
  context: null,
  answer: null,      // id of the answer being played
  nextLine: 0,       // number of the next feed line to take
  linesLost: 0,      // feed lines never seen (the value kept too few): stays 0
  nextTime: 0,       // context time where the next chunk starts
  sources: [],
  chunks: 0,         // chunks scheduled, all answers
  samples: 0,
  stops: 0,
  answers: [],       // per answer: {id, chunks, samples, energy, firstArrival, firstStart, stoppedAt, ended}
  playing() {
    return !!this.context && this.sources.length > 0 && this.context.currentTime < this.nextTime;
  },
};
window.omniPlayer = player;

function audioContext() {
  if (!player.context) player.context = new AudioContext({ sampleRate: SAMPLE_RATE });
  if (player.context.state === "suspended") player.context.resume();
  return player.context;
}
// Browsers start audio only after a user gesture; the Record click is one.
document.addEventListener("pointerdown", audioContext, { capture: true });

function current() {
  return player.answers[player.answers.length - 1];
}

function silence() {
  for (const source of player.sources) {
    try { source.stop(); } catch (error) { /* already ended */ }
  }
  player.sources = [];
  player.nextTime = 0;
}

function stopAll() {
  silence();
  const answer = current();
  if (answer && answer.stoppedAt === null) {
    answer.stoppedAt = Date.now();
    player.stops += 1;
  }
  element.dataset.state = "stopped";
}

function schedule(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  const context = audioContext();
  const buffer = context.createBuffer(1, pcm.length, SAMPLE_RATE);
  const channel = buffer.getChannelData(0);
  let energy = 0;
  for (let i = 0; i < pcm.length; i++) {
    channel[i] = pcm[i] / 32768;
    energy += channel[i] * channel[i];
  }
  const source = context.createBufferSource();
  source.buffer = buffer;
  source.connect(context.destination);
  const startAt = Math.max(context.currentTime + LEAD_SECONDS, player.nextTime);
  source.start(startAt);
  source.onended = () => {
    player.sources = player.sources.filter((s) => s !== source);
    if (!player.sources.length && element.dataset.state === "playing") element.dataset.state = "idle";
  };
  player.sources.push(source);
  player.nextTime = startAt + buffer.duration;
  player.chunks += 1;
  player.samples += pcm.length;
  const answer = current();
  const now = Date.now();
  if (answer.firstArrival === null) {
    answer.firstArrival = now;
    answer.firstStart = now + (startAt - context.currentTime) * 1000;
  }
  answer.chunks += 1;
  answer.samples += pcm.length;
  answer.energy += energy;
  element.dataset.state = "playing";
}

function read() {
  // The value is a header and the feed's last numbered lines (omni_demo/playback.py): take each line not
  // taken yet, by its number, so an update that the script never saw costs nothing.
  const value = props.value || "";
  const headerEnd = value.indexOf("\n");
  if (headerEnd < 0 || !value.startsWith("answer ")) return;
  const id = value.slice(7, headerEnd);
  if (id !== player.answer) {
    silence();  // a new answer replaces whatever was left of the last one
    player.answer = id;
    player.nextLine = 0;
    player.answers.push({ id, chunks: 0, samples: 0, energy: 0, firstArrival: null, firstStart: null, stoppedAt: null, ended: false });
    element.dataset.state = "idle";
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
    if (line.startsWith("pcm ")) {
      if (answer.stoppedAt === null) schedule(line.slice(4));
    } else if (line === "stop") {
      stopAll();
    } else if (line === "end") {
      answer.ended = true;
    }
  }
}

watch("value", read);
read();
