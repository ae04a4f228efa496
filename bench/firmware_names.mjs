// Loads one app's device modules in the MicroPython WebAssembly port and prints the names
// (qstrs) they interned; driven by bench/firmware_names.py (a job as JSON on stdin, one JSON
// line back: {bare, after, info}: micropython.qstr_info(1)'s dumps before and after the imports).

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
try {
  mp.runPython('import sys, gc\nsys.path[:0] = ["/bench", "/proj"]\nimport asyncio\nimport micropython\n');
  out = "";
  mp.runPython("micropython.qstr_info(1)");
  const bare = out;
  mp.runPython(job.device_imports);
  out = "";
  mp.runPython("micropython.qstr_info(1)");
  process.stdout.write(JSON.stringify({ bare, after: out }) + "\n");
} catch (e) {
  process.stdout.write(JSON.stringify({ error: String(e?.message ?? e), output: out }) + "\n");
}
process.exit(0);
