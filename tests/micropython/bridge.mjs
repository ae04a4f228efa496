// Serves one MicroPython module to a host test, one request at a time (tests/ble_update_bridge.py).
//
// Usage: node bridge.mjs JOB.json
// Job (JSON): micropython, heapsize, files [[host, vfs]...], sys_path, module (as runner.mjs).
// Then every line on stdin is passed to `await module.op(line)`; its answer (a string) is
// written on stdout as one line after MARK. Whatever MicroPython prints goes to stderr. An
// exception in op() answers {"error": traceback}.

import fs from "node:fs";
import readline from "node:readline";
import { pathToFileURL } from "node:url";

const MARK = "@@bridge@@ ";
const job = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { loadMicroPython } = await import(pathToFileURL(job.micropython).href);
const mp = await loadMicroPython({
  heapsize: job.heapsize,
  linebuffer: true,
  stdout: (line) => process.stderr.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});
for (const [host, vfs] of job.files) {
  mp.FS.mkdirTree(vfs.slice(0, vfs.lastIndexOf("/")) || "/");
  mp.FS.writeFile(vfs, fs.readFileSync(host));
}
mp.runPython(`
import sys, io, json
sys.path[:0] = ${JSON.stringify(job.sys_path)}
import ${job.module} as _bridge_mod

async def _bridge_op(line):
    try:
        return await _bridge_mod.op(line)
    except BaseException as e:
        buf = io.StringIO()
        sys.print_exception(e, buf)
        return json.dumps({"error": buf.getvalue()})
`);
process.stdout.write(MARK + JSON.stringify({ ready: true }) + "\n");
const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  await mp.runPythonAsync(`_bridge_result = await _bridge_op(${JSON.stringify(line)})`);
  process.stdout.write(MARK + mp.globals.get("_bridge_result") + "\n");
}
process.exit(0);
