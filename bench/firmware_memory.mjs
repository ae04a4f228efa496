// Runs one app's node for simulated days inside MicroPython (WebAssembly port) and measures
// its heap; driven by bench/firmware_memory.py, which passes a job as JSON on stdin and reads
// one JSON line back.
//
// Why JavaScript drives the run: in this port a Python object handed to JavaScript (every
// runPythonAsync coroutine, every awaited promise) stays pinned until JavaScript's own
// garbage collector finalizes its proxy, so gc.collect() alone leaves garbage counted
// (measured: 2,000 small steps "retain" 249 KB; with a JS gc between them, 96 bytes).
// So the run goes in chunks of `sample_every` scheduler steps (one runPythonAsync each; a
// chunk also ends at the step where the Python expression `watch` changes value, so the
// instants that matter, e.g. a frame just heard, are sampled every time);
// after each chunk JavaScript collects (node --expose-gc), lets finalizers run, and then
// Python collects and samples gc.mem_alloc(): the live heap at that step boundary, as a
// board's collector would see it. A JS gc per step would cost about 7 ms a step.
//
// Per simulated day (`day_ms` of the clock) it keeps the peak, the floor (lowest) and the
// median sample, and at the end of each day, after the same collections, runs `probe`
// (optional Python that sets _probe to a JSON string: what the caller wants counted then,
// e.g. list lengths) and, with `heap_map`, counts the live objects by type (heapMap below).

import fs from "node:fs";
import { pathToFileURL } from "node:url";

const job = JSON.parse(fs.readFileSync(0, "utf8"));
const { loadMicroPython } = await import(pathToFileURL(job.micropython).href);
let out = "";
const mp = await loadMicroPython({
  heapsize: job.heapsize,
  stdout: (l) => { out += l + "\n"; },
  stderr: (l) => { out += l + "\n"; },
});
for (const [host, vfs] of job.files) {
  mp.FS.mkdirTree(vfs.slice(0, vfs.lastIndexOf("/")));
  mp.FS.writeFile(vfs, fs.readFileSync(host));
}
// Live objects by type from micropython.mem_info(1)'s block map (a head letter per object:
// T tuple, L list, D dict, S str/bytes, A bytearray/array, F float, B bytecode function,
// M module, h anything else; '=' continues the object before): {letter: [objects, blocks]}.
const heapMap = () => {
  mp.runPython("gc.collect()");  // runs once this call returns (see mem below)
  const start = out.length;
  mp.runPython("import micropython\nmicropython.mem_info(1)");
  const dump = out.slice(start);
  out = out.slice(0, start);
  const count = {};
  let cur = null, inMap = false;
  for (const line of dump.split(/\r?\n/)) {
    if (line.startsWith("GC memory layout")) { inMap = true; cur = null; continue; }
    const i = line.indexOf(": ");
    if (!inMap || i < 0 || line.trim().startsWith("(")) continue;
    for (const c of line.slice(i + 2)) {
      if (c === ".") cur = null;
      else if (c === "=") { if (cur) count[cur][1]++; }
      else { cur = c; (count[c] ??= [0, 0]); count[c][0]++; count[c][1]++; }
    }
  }
  return count;
};
// This port's gc.collect() only asks for a collection: it runs when the call from JavaScript
// returns (ports/webassembly/main.c, gc_collect_top_level: at the top level no Python object
// hides in WebAssembly locals). So gc.collect(); gc.mem_alloc() in one call reads the heap
// before the collection, with every piece of garbage since the last one (measured: 10 KB of
// lists dropped in one call still counted by it, 80 B in the next call). Collect in one call,
// read in the next.
const mem = () => {
  mp.runPython("gc.collect()");
  mp.runPython("_m = gc.mem_alloc()");
  return mp.globals.get("_m");
};
try {
  mp.runPython(`
import sys, gc
sys.path[:0] = ["/bench", "/proj"]
import asyncio
`);
  global.gc();
  const interpreter = mem();
  mp.runPython(job.device_imports);
  const code = mem();
  mp.runPython(job.sim_imports);
  const codeSim = mem();
  mp.runPython(job.setup);
  mp.runPython(`def _watch():\n    return ${job.watch || "None"}\n`);
  mp.runPython(`
async def _chunk(n):
    k = 0
    w = _watch()
    while k < n:
        if not await _clock._step(_end):
            return k, False
        k += 1
        if _watch() != w:
            break
    return k, True
async def _run_chunk(n):
    global _k, _more, _now
    _k, _more = await asyncio.create_task(_chunk(n))
    _now = _clock.ms()
`);
  const tick = () => new Promise((r) => setImmediate(r));
  const dayMs = job.day_ms || 86400000;
  const days = [];  // per day: {peak, floor, median, samples, resampled, pinned_max, probe, heap_map}
  const daySamples = [];
  let floor = Infinity, resampled = 0, pinnedMax = 0, peak = 0, steps = 0, samples = 0, day = 0, dayPeak = 0, dayFloor = Infinity;
  const endDay = () => {
    daySamples.sort((a, b) => a - b);
    const d = { peak: dayPeak, floor: dayFloor, median: daySamples[daySamples.length >> 1] ?? null,
      samples: daySamples.length, resampled, pinned_max: pinnedMax };
    daySamples.length = 0;
    pinnedMax = 0;
    resampled = 0;
    if (job.probe) { mp.runPython(job.probe); d.probe = JSON.parse(mp.globals.get("_probe")); }
    if (job.heap_map) d.heap_map = heapMap();
    days.push(d);
    dayPeak = 0;
    dayFloor = Infinity;
  };
  const t0 = Date.now();
  for (;;) {
    await mp.runPythonAsync(`await _run_chunk(${job.sample_every})`);
    steps += mp.globals.get("_k");
    global.gc();
    await tick();
    let m = mem();
    const first = m;
    // A sample that would raise the day's peak may still count Python garbage whose JS
    // proxies were not finalized yet (finalizers run some ticks after a JS gc): nothing of
    // the node runs between these reads, so collect again and keep the lowest, up to
    // `resample` times (`resampled`/`pinned_max` per day say how often and how much).
    for (let r = 0; r < job.resample && m > dayPeak && m > floor + 512; r++) {
      global.gc();
      await new Promise((res) => setTimeout(res, 1));
      const again = mem();
      if (again >= m) break;
      m = again;
    }
    if (first > m) { resampled++; if (first - m > pinnedMax) pinnedMax = first - m; }
    if (m < floor) floor = m;
    samples++;
    if (m > peak) peak = m;
    if (m > dayPeak) dayPeak = m;
    if (m < dayFloor) dayFloor = m;
    daySamples.push(m);
    const more = mp.globals.get("_more");
    const now = mp.globals.get("_now");
    while (now >= (day + 1) * dayMs || (!more && dayPeak)) {
      endDay();
      day++;
      if (!more) break;
    }
    if (!more) break;
  }
  // `after`: Python run once the days are over, each in its own call, the heap read after each
  // (e.g. what a moment inside one step holds: code loaded and dropped within it)
  const after = [];
  for (const code of job.after || []) { mp.runPython(code); after.push(mem()); }
  mp.runPython(job.check);
  const check = JSON.parse(mp.globals.get("_check"));
  process.stdout.write(JSON.stringify({ interpreter, code, code_sim: codeSim, peak, steps, samples, days,
    wall_ms: Date.now() - t0, check, after, output: out }) + "\n");
} catch (e) {
  process.stdout.write(JSON.stringify({ error: String(e?.message ?? e), output: out }) + "\n");
}
process.exit(0);
