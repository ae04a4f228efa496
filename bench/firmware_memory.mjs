// Runs one app's node for a simulated day inside MicroPython (WebAssembly port) and measures
// its heap; driven by bench/firmware_memory.py, which passes a job as JSON on stdin and reads
// one JSON line back.
//
// Why JavaScript drives the day: in this port a Python object handed to JavaScript (every
// runPythonAsync coroutine, every awaited promise) stays pinned until JavaScript's own
// garbage collector finalizes its proxy, so gc.collect() alone leaves garbage counted
// (measured: 2,000 small steps "retain" 249 KB; with a JS gc between them, 96 bytes).
// So the day runs in chunks of SAMPLE_EVERY scheduler steps (one runPythonAsync each);
// after each chunk JavaScript collects (node --expose-gc), lets finalizers run, and then
// Python collects and samples gc.mem_alloc(): the live heap at that step boundary, as a
// board's collector would see it. A JS gc per step would cost about 7 ms a step.

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
const mem = () => { mp.runPython("_m = _mem()"); return mp.globals.get("_m"); };
try {
  mp.runPython(`
import sys, gc
sys.path[:0] = ["/bench", "/proj"]
import asyncio
def _mem():
    gc.collect()
    return gc.mem_alloc()
`);
  global.gc();
  const interpreter = mem();
  mp.runPython(job.device_imports);
  const code = mem();
  mp.runPython(job.sim_imports);
  const codeSim = mem();
  mp.runPython(job.setup);
  mp.runPython(`
async def _chunk(n):
    k = 0
    while k < n:
        if not await _clock._step(_end):
            return k, False
        k += 1
    return k, True
async def _run_chunk(n):
    global _k, _more
    _k, _more = await asyncio.create_task(_chunk(n))
`);
  const tick = () => new Promise((r) => setImmediate(r));
  let peak = 0, steps = 0, samples = 0;
  const t0 = Date.now();
  for (;;) {
    await mp.runPythonAsync(`await _run_chunk(${job.sample_every})`);
    steps += mp.globals.get("_k");
    global.gc();
    await tick();
    const m = mem();
    samples++;
    if (m > peak) peak = m;
    if (!mp.globals.get("_more")) break;
  }
  mp.runPython(job.check);
  const check = JSON.parse(mp.globals.get("_check"));
  process.stdout.write(JSON.stringify({ interpreter, code, code_sim: codeSim, peak, steps, samples,
    wall_ms: Date.now() - t0, check, output: out }) + "\n");
} catch (e) {
  process.stdout.write(JSON.stringify({ error: String(e?.message ?? e), output: out }) + "\n");
}
process.exit(0);
