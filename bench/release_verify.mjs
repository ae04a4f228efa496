// Runs bench/release_verify.py's MicroPython script in the WebAssembly port under Node.js.
//
// Usage: node --expose-gc release_verify.mjs JOB.json
// Job: {"micropython": path of micropython.mjs, "heapsize": bytes, "files": [[host, vfs], ...],
//       "script": MicroPython source}. The script prints one line "@@result@@ {json}".
// JavaScript's collector runs between the script's chunks (each `await js_gc()` in it), so
// objects pinned by JavaScript proxies do not inflate the heap figures (tests/micropython/README.md).
import fs from "node:fs";

const job = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { loadMicroPython } = await import(job.micropython);
const mp = await loadMicroPython({ heapsize: job.heapsize, stdout: (l) => console.log(l) });
for (const [host, vfs] of job.files) {
  const parts = vfs.split("/").slice(1, -1);
  let d = "";
  for (const p of parts) {
    d += "/" + p;
    try { mp.FS.mkdir(d); } catch (e) { /* exists */ }
  }
  mp.FS.writeFile(vfs, fs.readFileSync(host));
}
mp.registerJsModule("jsgc", { collect: () => { if (globalThis.gc) globalThis.gc(); return 0; } });
await mp.runPythonAsync(job.script);
