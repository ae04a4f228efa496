// Runs one MicroPython test file inside the WebAssembly port (one fresh interpreter per file).
//
// Usage: node runner.mjs [job.json]   (without an argument the job is read from stdin)
//
// Job (JSON):
//   micropython  absolute path of micropython.mjs (from node_modules)
//   heapsize     initial GC heap in bytes (the heap grows on demand)
//   files        [[host_path, vfs_path], ...] copied into the emscripten FS before start
//   sys_path     directories put in front of sys.path
//   vectors      VFS path exposed as mptest.VECTORS
//   module       test module to import (e.g. "mp_selftest")
//   tests        names of the test functions to run, in order
//
// Output: whatever MicroPython prints, plus one line per event starting with MARK followed by
// JSON: {"event": "ready"|"import"|"start"|"result"|"done", ...}. Events are written
// synchronously (stdout is a pipe), so a run killed on timeout still shows how far it got.

import fs from "node:fs";
import { pathToFileURL } from "node:url";

const MARK = "@@mptest@@ ";

const job = JSON.parse(fs.readFileSync(process.argv[2] ?? 0, "utf8"));

// MicroPython output, unbuffered by the port: keep partial lines so an event never lands
// in the middle of one.
let pending = [];
const decoder = new TextDecoder();
function outByte(bytes) {
  for (const c of bytes) {
    pending.push(c);
    if (c === 10) flushOutput();
  }
}
function flushOutput() {
  if (pending.length === 0) return;
  let text = decoder.decode(new Uint8Array(pending));
  pending = [];
  if (!text.endsWith("\n")) text += "\n";
  process.stdout.write(text);
}
function emit(event) {
  flushOutput();
  process.stdout.write(MARK + JSON.stringify(event) + "\n");
}

// Written into the VFS as /lib/mptest.py (in sys.path by default).
const MPTEST = `
import gc, json
VECTORS = ${JSON.stringify(job.vectors)}

def load_json(relpath):
    path = VECTORS + "/" + relpath
    try:
        f = open(path)
    except OSError as e:
        raise OSError("mptest.load_json: cannot open %s (%r); the vectors dir comes from "
                      "the repository's tests/vectors on the host" % (path, e))
    with f:
        return json.load(f)

def mem():
    gc.collect()
    return gc.mem_alloc()
`;

// Runs in __main__; each call returns a JSON string read back through mp.globals.
const DRIVER = `
import sys, io, json, time
sys.path[:0] = ${JSON.stringify(job.sys_path)}

def _mptest_tb(e):
    buf = io.StringIO()
    sys.print_exception(e, buf)
    return buf.getvalue()

def _mptest_import(name):
    global _mptest_mod
    try:
        _mptest_mod = __import__(name)
        return json.dumps({"ok": True})
    except BaseException as e:
        return json.dumps({"ok": False, "traceback": _mptest_tb(e)})

async def _mptest_run(name):
    t0 = time.ticks_ms()
    try:
        r = getattr(_mptest_mod, name)()
        if hasattr(r, "send"):  # coroutine (a generator in MicroPython)
            await r
        res = {"outcome": "passed"}
    except BaseException as e:
        res = {"outcome": "failed", "traceback": _mptest_tb(e)}
    res["ms"] = time.ticks_diff(time.ticks_ms(), t0)
    return json.dumps(res)
`;

const t0 = Date.now();
const { loadMicroPython } = await import(pathToFileURL(job.micropython).href);
const mp = await loadMicroPython({
  heapsize: job.heapsize,
  linebuffer: false,
  stdout: outByte,
  stderr: outByte,
});

function writeVfs(path, data) {
  mp.FS.mkdirTree(path.slice(0, path.lastIndexOf("/")) || "/");
  mp.FS.writeFile(path, data);
}
for (const [host, vfs] of job.files) writeVfs(vfs, fs.readFileSync(host));
writeVfs("/lib/mptest.py", MPTEST);
mp.runPython(DRIVER);
emit({ event: "ready", ms: Date.now() - t0 });

mp.runPython(`_mptest_result = _mptest_import(${JSON.stringify(job.module)})`);
const imported = JSON.parse(mp.globals.get("_mptest_result"));
emit({ event: "import", ...imported });

if (imported.ok) {
  for (const name of job.tests) {
    emit({ event: "start", test: name });
    let res;
    try {
      await mp.runPythonAsync(`_mptest_result = await _mptest_run(${JSON.stringify(name)})`);
      res = JSON.parse(mp.globals.get("_mptest_result"));
    } catch (e) {
      // Only reached if the driver itself broke (the test's exceptions are caught in Python).
      res = { outcome: "failed", traceback: `runner error: ${e?.stack ?? e}` };
    }
    emit({ event: "result", test: name, ...res });
  }
}
emit({ event: "done", ms: Date.now() - t0 });
// Stray asyncio tasks or timers left by a test must not keep the process alive.
process.exit(0);
