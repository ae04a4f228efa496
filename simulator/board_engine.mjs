// The interpreter of the virtual board (simulator/board.py): ONE real MicroPython
// (the WebAssembly port, node_modules/@micropython/micropython-webassembly-pyscript)
// per board boot. A soft or hard reset of the board is a new process, so every
// reset starts from a fresh heap and an empty sys.modules, as on a board.
//
// Usage: node board_engine.mjs CONFIG_JSON   (spawned by simulator/board.py)
//
// The host (board.py) owns the serial line and the REPL protocol; this process
// only executes code and owns the board's filesystem. They talk over stdin/stdout
// in frames: 1 type byte, 4-byte big-endian length, payload.
//
//   host -> engine                       engine -> host
//   X {src,name,mode}  execute code      B {banner,...}  booted, ready
//   F {path}           run a board file  O bytes         console output
//   C                  Ctrl-C            E               the traceback starts here
//   U id+bytes         UART rx           D {status,interrupts}  execution finished
//   P {kind,pin,value} input pin/adc/    U id+bytes      UART tx
//                      pulses            P {kind,pin,value}  output changed (out/pwm)
//   Q                  quit
//                                        R {kind}        the program reset the board
//                                        W {[timeout]}   watchdog started / fed
//                                        L text          diagnostic for the host's log
//
// Everything here is synchronous: the MicroPython VM runs on this thread, and the
// only moments it hands over are the waits the board's code makes (asyncio.run,
// time.sleep, polling the UART), where we poll stdin (a non-blocking pipe, set up
// by the host) for Ctrl-C and UART bytes. Nothing ever returns to Node's event loop,
// so the port's JS-timer asyncio never runs behind the board's back.
//
// The board's filesystem is MEMFS /flash mounted as MicroPython's "/", loaded from
// the host directory at boot and written through to it (close, mkdir, remove,
// rename), so files survive resets and restarts. Its capacity is cfg.fs_size,
// counted in cfg.block_size blocks (a file takes max(1, ceil(size/block)) blocks,
// a directory one): a write past it fails with ENOSPC, and os.statvfs("/") says so.
// FS errors carry MicroPython's (Linux) errno numbers, not emscripten's, so
// `OSError: [Errno 2] ENOENT` reads as it does on a board.

import fs from "node:fs";
import os from "node:os";
import nodePath from "node:path";
import { pathToFileURL } from "node:url";

const cfg = JSON.parse(process.argv[2]);
const ROOT = "/flash";
const IN = 0;
const OUT = 1;
const POLL_MS = 2; // stdin polling period while the board waits (Ctrl-C latency)

const sleeper = new Int32Array(new SharedArrayBuffer(4));
const sleep = (ms) => Atomics.wait(sleeper, 0, 0, ms);

// -- frames to the host ------------------------------------------------------------

function writeAll(buf) {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(OUT, buf, off, buf.length - off);
    } catch (e) {
      if (e.code !== "EAGAIN") process.exit(3); // host gone
      sleep(1);
    }
  }
}

function frame(type, payload) {
  const body = payload === undefined ? Buffer.alloc(0)
    : typeof payload === "string" ? Buffer.from(payload, "utf8") : Buffer.from(payload);
  const head = Buffer.alloc(5);
  head[0] = type.charCodeAt(0);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

let out = [];
let lastOut = 0;
function flushOutput() {
  if (out.length) {
    writeAll(frame("O", out));
    out = [];
  }
}
function send(type, payload) {
  flushOutput();
  writeAll(frame(type, payload));
}
// A board's stdout is "cooked": print's "\n" goes out as "\r\n".
function consoleBytes(bytes) {
  for (const c of bytes) {
    if (c === 10 && lastOut !== 13) out.push(13);
    out.push(c);
    lastOut = c;
  }
  if (out.length >= 1024) flushOutput();
}
const log = (text) => send("L", text);

// -- frames from the host ----------------------------------------------------------

let inbuf = Buffer.alloc(0);
const chunk = Buffer.alloc(65536);
const deferred = []; // X/F/Q frames that arrived while code was running
const uartRx = new Map(); // id -> array of bytes
let interrupt = false; // a Ctrl-C not yet raised in the running code
let interruptsSeen = 0; // Ctrl-C frames received during the current execution

function readFrames() {
  for (;;) {
    let n;
    try {
      n = fs.readSync(IN, chunk, 0, chunk.length, null);
    } catch (e) {
      if (e.code === "EAGAIN") break;
      throw e;
    }
    if (n === 0) process.exit(0); // host closed the pipe: power off
    inbuf = Buffer.concat([inbuf, chunk.subarray(0, n)]);
  }
  const frames = [];
  while (inbuf.length >= 5) {
    const len = inbuf.readUInt32BE(1);
    if (inbuf.length < 5 + len) break;
    frames.push({ type: String.fromCharCode(inbuf[0]), payload: inbuf.subarray(5, 5 + len) });
    inbuf = inbuf.subarray(5 + len);
  }
  return frames;
}

// Frames that may arrive at any time; the rest wait for the main loop.
function dispatch(frames, running) {
  for (const f of frames) {
    if (f.type === "C") {
      // One that reaches an idle engine arrived after its execution ended; the host
      // counts (D.interrupts) and gives it to the REPL, as a board's input buffer would.
      if (running) {
        interrupt = true;
        interruptsSeen++;
      }
    } else if (f.type === "U") {
      const id = f.payload[0];
      if (!uartRx.has(id)) uartRx.set(id, []);
      const q = uartRx.get(id);
      for (const b of f.payload.subarray(1)) q.push(b);
      if (q.length > UART_RX_MAX) q.splice(0, q.length - UART_RX_MAX); // overrun drops oldest
    } else if (f.type === "P") {
      try {
        ioInput(JSON.parse(f.payload.toString("utf8")));
      } catch (e) {
        log(`bad P frame: ${e}`);
      }
    } else if (f.type === "Q") {
      process.exit(0);
    } else {
      deferred.push(f);
    }
  }
}

const UART_RX_MAX = 4096;

// The board's pins as values: inputs set by the host ("pin" levels, "adc" mV,
// "pulses" to deliver), outputs ("out" levels, "pwm" duty_u16) reported to it.
const io = { pin: new Map(), adc: new Map(), out: new Map(), pwm: new Map() };
const pulses = new Map();
function ioInput(msg) {
  if (msg.kind === "pulses") pulses.set(msg.pin, (pulses.get(msg.pin) ?? 0) + Math.max(0, msg.value | 0));
  else if (msg.kind === "pin" || msg.kind === "adc") io[msg.kind].set(msg.pin, msg.value | 0);
} // bytes buffered per virtual UART, like a driver ring buffer

// Wait up to ms, watching for Ctrl-C. Returns 1 if interrupted.
let lastPoll = 0;
function wait(ms) {
  flushOutput();
  const end = Date.now() + Math.max(0, ms);
  for (;;) {
    dispatch(readFrames(), true);
    lastPoll = Date.now();
    if (interrupt) {
      interrupt = false;
      return 1;
    }
    const left = end - Date.now();
    if (left <= 0) return 0;
    sleep(Math.min(left, POLL_MS));
  }
}
// A cheap check for busy loops that never sleep: at most one syscall per POLL_MS.
function poll() {
  if (Date.now() - lastPoll < POLL_MS) return 0;
  return wait(0);
}
// At the end of an execution: a Ctrl-C that arrived is raised now, as
// mp_handle_pending does after the code returns.
function pending() {
  dispatch(readFrames(), true);
  const was = interrupt;
  interrupt = false;
  return was ? 1 : 0;
}

// -- MicroPython ----------------------------------------------------------------------

const { loadMicroPython } = await import(pathToFileURL(cfg.micropython).href);
const mp = await loadMicroPython({
  heapsize: cfg.heap,
  linebuffer: false,
  stdout: consoleBytes,
  stderr: consoleBytes,
});
const FS = mp.FS;

// -- the board's filesystem ------------------------------------------------------------

const LINUX_ERRNO = os.constants.errno;
// emscripten errno -> name, for the errors a filesystem raises (emscripten's ERRNO_CODES).
const EMSCRIPTEN_ERRNO = {
  44: "ENOENT", 20: "EEXIST", 54: "ENOTDIR", 31: "EISDIR", 55: "ENOTEMPTY", 28: "EINVAL",
  8: "EBADF", 2: "EACCES", 63: "EPERM", 29: "EIO", 51: "ENOSPC", 10: "EBUSY",
  37: "ENAMETOOLONG", 69: "EROFS", 22: "EFBIG", 75: "EXDEV", 32: "ELOOP",
};
function boardError(name) {
  const e = new FS.ErrnoError(LINUX_ERRNO[name]);
  e.vbMapped = true;
  return e;
}

const hostPath = (p) => nodePath.join(cfg.fsdir, p.slice(ROOT.length));
const absPath = (p) => nodePath.posix.normalize(p.startsWith("/") ? p : FS.cwd() + "/" + p);
const onFlash = (p) => p === ROOT || p.startsWith(ROOT + "/");

function globToRegExp(glob) {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*" && glob[i + 1] === "*") { re += ".*"; i++; }
    else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp("^" + re + "$");
}
const corrupt = (cfg.corrupt || []).map(globToRegExp);

let internal = 0; // our own FS calls: no errno mapping, no mirroring
function asInternal(fn) {
  internal++;
  try { return fn(); } finally { internal--; }
}

function blocksOf(bytes) {
  return Math.max(1, Math.ceil(bytes / cfg.block_size));
}
function usedBlocks(dir = ROOT) {
  let blocks = 1;
  for (const name of FS.readdir(dir)) {
    if (name === "." || name === "..") continue;
    const p = dir + "/" + name;
    const st = FS.stat(p);
    blocks += FS.isDir(st.mode) ? usedBlocks(p) : blocksOf(st.size);
  }
  return blocks;
}
const totalBlocks = Math.floor(cfg.fs_size / cfg.block_size);

function loadFromHost(hostDir, dir) {
  for (const ent of fs.readdirSync(hostDir, { withFileTypes: true })) {
    if (ent.name.startsWith(".lumeau-")) continue; // our temp files
    const h = nodePath.join(hostDir, ent.name);
    const p = dir + "/" + ent.name;
    if (ent.isDirectory()) {
      FS.mkdir(p);
      loadFromHost(h, p);
    } else if (ent.isFile()) {
      FS.writeFile(p, fs.readFileSync(h));
    }
  }
}

// Atomic on the host too: a host crash mid-write leaves the old file or the new.
function mirrorFile(p) {
  const data = FS.readFile(p);
  const h = hostPath(p);
  const tmp = nodePath.join(nodePath.dirname(h), ".lumeau-" + process.pid + "-" + nodePath.basename(h));
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, h);
}

function corruptIfAsked(p) {
  const rel = p.slice(ROOT.length + 1);
  if (!corrupt.some((re) => re.test(rel))) return;
  const data = FS.readFile(p);
  if (data.length === 0) return;
  data[data.length >> 1] ^= 0x01; // one flipped bit, as a failing flash cell would
  FS.writeFile(p, data);
  log(`corrupted ${rel} on request`);
}

// One depth for all wrappers: only the outermost FS call (the syscall's) maps
// errnos; emscripten's own nested calls expect its numbers (e.g. rename -> stat).
let depth = 0;
function wrap(name, after) {
  const orig = FS[name];
  FS[name] = function (...args) {
    if (internal) return orig.apply(this, args);
    depth++;
    try {
      const result = orig.apply(this, args);
      if (depth === 1 && after) asInternal(() => after(args, result));
      return result;
    } catch (e) {
      if (depth === 1 && e && e.name === "ErrnoError" && !e.vbMapped) {
        const name = EMSCRIPTEN_ERRNO[e.errno];
        if (name && LINUX_ERRNO[name] !== undefined) throw boardError(name);
      }
      throw e;
    } finally {
      depth--;
    }
  };
}

function installFilesystem() {
  FS.mkdir(ROOT);
  fs.mkdirSync(cfg.fsdir, { recursive: true });
  loadFromHost(cfg.fsdir, ROOT);

  const origWrite = FS.write;
  FS.write = function (stream, buffer, offset, length, position, canOwn) {
    if (!internal && stream.path && onFlash(absPath(stream.path)) && length > 0) {
      const pos = position ?? stream.position;
      const size = stream.node.usedBytes ?? 0;
      const grown = Math.max(size, pos + length);
      const need = asInternal(() => usedBlocks()) - blocksOf(size) + blocksOf(grown);
      if (need > totalBlocks) throw boardError("ENOSPC");
    }
    return origWrite.call(this, stream, buffer, offset, length, position, canOwn);
  };

  wrap("open");
  wrap("stat");
  wrap("lstat");
  wrap("readdir");
  wrap("chdir");
  wrap("close", ([stream]) => {
    const p = stream.path && absPath(stream.path);
    if (p && onFlash(p) && (stream.flags & 3) !== 0 && FS.isFile(FS.stat(p).mode)) {
      corruptIfAsked(p);
      mirrorFile(p);
    }
  });
  wrap("mkdir", ([p]) => {
    const a = absPath(p);
    if (onFlash(a)) fs.mkdirSync(hostPath(a), { recursive: true });
  });
  wrap("rmdir", ([p]) => {
    const a = absPath(p);
    if (onFlash(a)) fs.rmSync(hostPath(a), { recursive: true, force: true });
  });
  wrap("unlink", ([p]) => {
    const a = absPath(p);
    if (onFlash(a)) fs.rmSync(hostPath(a), { force: true });
  });
  wrap("rename", ([from, to]) => {
    const a = absPath(from);
    const b = absPath(to);
    if (onFlash(a) && onFlash(b)) fs.renameSync(hostPath(a), hostPath(b));
    else if (onFlash(b)) mirrorFile(b); // moved in from outside the flash
    else if (onFlash(a)) fs.rmSync(hostPath(a), { recursive: true, force: true });
  });

  const origStatfs = FS.statfs;
  FS.statfs = function (p) {
    const r = origStatfs.call(this, p);
    if (!onFlash(absPath(p))) return r;
    const used = asInternal(() => usedBlocks());
    const free = Math.max(0, totalBlocks - used);
    return Object.assign(r, {
      bsize: cfg.block_size, frsize: cfg.block_size, blocks: totalBlocks, bfree: free, bavail: free,
    });
  };
}

// -- the board's own modules (simulator/vboard) ------------------------------------------

function hexOf(bytes) {
  return Buffer.from(bytes).toString("hex");
}

mp.registerJsModule("_vbjs", {
  wait,
  poll,
  pending,
  error_begin: () => send("E"),
  reset: (kind) => {
    send("R", JSON.stringify({ kind }));
    process.exit(0);
  },
  reset_cause: () => cfg.reset_cause,
  wdt_start: (timeout) => send("W", JSON.stringify({ timeout })),
  wdt_feed: () => send("W", "{}"),
  uart_write: (id, hex) => {
    const data = Buffer.from(hex, "hex");
    send("U", Buffer.concat([Buffer.from([id]), data]));
    return data.length;
  },
  uart_any: (id) => {
    dispatch(readFrames(), true);
    return uartRx.get(id)?.length ?? 0;
  },
  uart_read: (id, n) => {
    dispatch(readFrames(), true);
    const q = uartRx.get(id) ?? [];
    return hexOf(q.splice(0, Math.min(n, q.length)));
  },
  io_get: (kind, pin, dflt) => {
    dispatch(readFrames(), true);
    return io[kind].get(pin) ?? dflt;
  },
  io_set: (kind, pin, value) => {
    if (io[kind].get(pin) === value) return;
    io[kind].set(pin, value);
    send("P", JSON.stringify({ kind, pin, value }));
  },
  io_take_pulses: (pin) => {
    const n = pulses.get(pin) ?? 0;
    pulses.delete(pin);
    return n;
  },
  // os.rename on the board comes here: the port's VfsPosix with a root builds
  // both paths in one buffer, so its rename(old, new) renames new onto itself.
  rename: (from, to) => {
    try {
      FS.rename(ROOT + from, ROOT + to);
      return 0;
    } catch (e) {
      if (e && e.name === "ErrnoError") return e.errno;
      throw e;
    }
  },
  board_json: () => JSON.stringify({
    name: cfg.name, fs_size: cfg.fs_size, block_size: cfg.block_size, uarts: cfg.uarts,
  }),
});

FS.mkdir("/_vb");
for (const name of fs.readdirSync(cfg.vboard_dir)) {
  if (name.endsWith(".py")) FS.writeFile("/_vb/" + name, fs.readFileSync(nodePath.join(cfg.vboard_dir, name)));
}
installFilesystem();
mp.runPython("import sys\nsys.path.insert(0, '/_vb')\nimport _vbdrv\n_vbdrv.install()\n");
const drv = mp.pyimport("_vbdrv");

send("B", JSON.stringify({
  banner: drv.banner(cfg.machine),
  mpy: drv.mpy_abi(),
  reset_cause: cfg.reset_cause,
  fs_blocks: totalBlocks,
}));

// -- main loop: one execution at a time ----------------------------------------------------

function execute(f) {
  const job = JSON.parse(f.payload.toString("utf8"));
  interrupt = false;
  interruptsSeen = 0;
  let status;
  try {
    if (f.type === "F") status = drv.run_file(job.path);
    else status = drv.run(job.src, job.name, job.mode);
  } catch (e) {
    // Only reached if the driver itself broke; say so on the console like a crash would.
    consoleBytes(Buffer.from(`\nvirtual board: interpreter error: ${String(e).split("\n")[0]}\n`));
    status = "error";
  }
  send("D", JSON.stringify({ status, interrupts: interruptsSeen }));
}

for (;;) {
  if (!deferred.length) {
    dispatch(readFrames(), false);
    if (!deferred.length) {
      sleep(POLL_MS);
      continue;
    }
  }
  const f = deferred.shift();
  if (f.type === "X" || f.type === "F") execute(f);
}
