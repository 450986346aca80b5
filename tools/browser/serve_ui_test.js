// Drives `calico serve`'s web UI in headless Chromium (playwright-core) and
// checks the API's 4xx answers from the page. Run by serve_ui_test.sh:
//   node serve_ui_test.js OUT_DIR   (env: CALICO_BIN, CHROMIUM, NODE_PATH)
"use strict";

const { chromium } = require("playwright-core");
const { spawn } = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");
const zlib = require("zlib");

const outDir = process.argv[2] || ".";
const calico = process.env.CALICO_BIN;
const browserPath = process.env.CHROMIUM || "/usr/bin/chromium";

let passed = 0;
let failed = 0;
function check(name, ok, detail) {
  if (ok) {
    passed++;
    console.log("ok   " + name);
  } else {
    failed++;
    console.log("FAIL " + name + (detail !== undefined ? ": " + detail : ""));
  }
}

// --- a small PNG encoder (RGB, no filter) for the demo images ---
const crcTable = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = crcTable[(c ^ b) & 255] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}
function png(w, h, pixel) {
  const raw = Buffer.alloc((3 * w + 1) * h);
  for (let y = 0; y < h; y++) {
    raw[y * (3 * w + 1)] = 0;
    for (let x = 0; x < w; x++) {
      const [r, g, b] = pixel(x, y);
      const o = y * (3 * w + 1) + 1 + 3 * x;
      raw[o] = r; raw[o + 1] = g; raw[o + 2] = b;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; ihdr[9] = 2; ihdr[10] = 0; ihdr[11] = 0; ihdr[12] = 0;
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", zlib.deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}
/** A "mug": a body box with a handle ring at x0, on a soft background. */
function mug(x0, colour) {
  return png(160, 120, (x, y) => {
    if (x >= x0 && x < x0 + 60 && y >= 30 && y < 100) return colour;
    const dx = x - (x0 + 70), dy = y - 65;
    const r = Math.sqrt(dx * dx + dy * dy);
    if (r > 12 && r < 20 && dx > 0) return [60, 60, 70];
    return [200 - y / 2, 215 - y / 3, 230];
  });
}

function startServer(dataDir) {
  return new Promise((resolve, reject) => {
    const proc = spawn(calico, [
      "serve", "--preset", "tiny", "--seed", "3", "--addr", "127.0.0.1:0",
      "--data-dir", dataDir, "--max-body-mb", "1", "--max-new-tokens", "16",
    ], { stdio: ["ignore", "pipe", "inherit"] });
    let buf = "";
    const timer = setTimeout(() => reject(new Error("server did not start in 120 s")), 120000);
    proc.stdout.on("data", (d) => {
      buf += d.toString();
      const m = buf.match(/on (http:\/\/127\.0\.0\.1:\d+)\//);
      if (m) { clearTimeout(timer); resolve({ proc, url: m[1] }); }
    });
    proc.on("exit", (code) => { clearTimeout(timer); reject(new Error("server exited with " + code)); });
  });
}

/** Runs one segmentation in the UI and checks the overlays and legend. */
async function segmentInUi(page, label, task) {
  await page.selectOption("#task", task);
  await page.evaluate(() => { document.body.dataset.state = "idle"; });
  await page.click("#run");
  await page.waitForFunction(
    () => ["done", "error"].includes(document.body.dataset.state), null, { timeout: 120000 });
  const state = await page.evaluate(() => document.body.dataset.state);
  const error = await page.textContent("#error");
  check(label + ": request succeeded", state === "done", error);
  if (state !== "done") return;
  const legend = await page.$$eval("#legend li.legend-item", (els) =>
    els.map((e) => ({ label: e.dataset.label, text: e.textContent, colour: e.querySelector(".sw").style.background })));
  check(label + ": legend has labels", legend.length > 0 && legend.every((l) => l.label && l.text.trim() && l.colour),
    JSON.stringify(legend));
  const panels = await page.$$eval("#images .panel", (ps) => ps.map((p) => {
    const base = p.querySelector("canvas.image"), ov = p.querySelector("canvas.overlay");
    const count = (c, pred) => {
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 0; i < d.length; i += 4) if (pred(d, i)) n++;
      return n;
    };
    return {
      w: ov.width, h: ov.height,
      imagePixels: count(base, (d, i) => d[i + 3] > 0),
      overlayPixels: count(ov, (d, i) => d[i + 3] > 0),
    };
  }));
  check(label + ": two image panels side by side", panels.length === 2, JSON.stringify(panels));
  check(label + ": images drawn", panels.every((p) => p.imagePixels === p.w * p.h && p.w > 0), JSON.stringify(panels));
  check(label + ": overlays drawn (non-empty)", panels.some((p) => p.overlayPixels > 0), JSON.stringify(panels));
  const answer = await page.textContent("#answer");
  check(label + ": answer text shown", answer.trim().length > 0, answer);
  // Hovering a legend label highlights that label's masks on every image.
  const alphaSum = () => page.$$eval("canvas.overlay", (cs) => cs.map((c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let s = 0;
    for (let i = 3; i < d.length; i += 4) s += d[i];
    return s;
  }).reduce((a, b) => a + b, 0));
  const before = await alphaSum();
  await page.hover("#legend li.legend-item >> nth=0");
  const active = await page.$$eval("#legend li.active", (els) => els.length);
  const during = await alphaSum();
  check(label + ": hover highlights a label", active === 1 && during !== before, `active ${active}, alpha ${before} -> ${during}`);
  await page.mouse.move(0, 0);
}

async function main() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "calico-ui-"));
  const data = path.join(tmp, "demo");
  fs.mkdirSync(data);
  fs.writeFileSync(path.join(data, "mug-red.png"), mug(20, [200, 40, 40]));
  fs.writeFileSync(path.join(data, "mug-green.png"), mug(60, [40, 160, 60]));
  const uploads = [path.join(tmp, "upload-1.png"), path.join(tmp, "upload-2.png")];
  fs.writeFileSync(uploads[0], mug(30, [60, 90, 200]));
  fs.writeFileSync(uploads[1], mug(50, [220, 150, 30]));

  const { proc, url } = await startServer(data);
  console.log("server at " + url);
  const browser = await chromium.launch({ executablePath: browserPath, headless: true, args: ["--no-sandbox"] });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on("pageerror", (e) => check("no page errors", false, e.message));
    await page.goto(url + "/");
    await page.waitForSelector("#demos input.demo", { state: "attached", timeout: 30000 });
    const demos = await page.$$eval("#demos input.demo", (els) => els.map((e) => e.value));
    check("demo images listed", demos.length === 2, JSON.stringify(demos));

    // 1. Upload a pair, common parts.
    await page.setInputFiles("#files", uploads);
    await segmentInUi(page, "upload + common-parts", "common-parts");
    // 2. Demo images, unique parts.
    await page.setInputFiles("#files", []);
    await page.$$eval("#demos input.demo", (els) => els.forEach((e) => { e.checked = true; }));
    await segmentInUi(page, "demo images + unique-parts", "unique-parts");
    // The screenshot: demo pair with overlays, first label highlighted.
    await page.hover("#legend li.legend-item >> nth=0");
    const shot = path.join(outDir, "serve_ui.png");
    await page.screenshot({ path: shot, fullPage: true });
    console.log("screenshot " + shot);

    // 3. Bad inputs posted from the page: 4xx with a JSON error.
    const bad = await page.evaluate(async () => {
      const pngBlob = async (name) => (await fetch("/demo/" + name)).blob();
      const a = await pngBlob("mug-red.png");
      const b = await pngBlob("mug-green.png");
      const post = async (fill) => {
        const f = new FormData();
        fill(f);
        const r = await fetch("/api/segment", { method: "POST", body: f });
        let body = null;
        try { body = await r.json(); } catch (e) { /* not JSON */ }
        return { status: r.status, error: body && body.error };
      };
      const out = {};
      out.oneImage = await post((f) => { f.append("image", a, "a.png"); f.append("task", "common-object"); });
      out.notImage = await post((f) => {
        f.append("image", a, "a.png");
        f.append("image", new Blob(["just text"], { type: "text/plain" }), "notes.txt");
        f.append("task", "common-object");
      });
      out.unknownTask = await post((f) => { f.append("image", a, "a.png"); f.append("image", b, "b.png"); f.append("task", "dance"); });
      out.tooLarge = await post((f) => {
        f.append("image", a, "a.png");
        f.append("image", new Blob([new Uint8Array(1536 * 1024)]), "huge.png");
        f.append("task", "common-object");
      });
      const m = await fetch("/api/segment", {
        method: "POST", headers: { "Content-Type": "multipart/form-data; boundary=zzz" }, body: "--zzz\r\nbroken",
      });
      out.malformed = { status: m.status, error: (await m.json()).error };
      const t = await fetch("/demo/..%2f..%2fetc%2fpasswd");
      out.traversal = { status: t.status, error: (await t.json()).error };
      return out;
    });
    const want = { oneImage: [400, "2 images"], notImage: [400, "notes.txt"], unknownTask: [400, "unknown task"],
      tooLarge: [413, "limit"], malformed: [400, "malformed"], traversal: [400, ""] };
    for (const [k, [status, needle]] of Object.entries(want)) {
      const got = bad[k];
      check("bad input " + k + " -> " + status,
        got && (got.status === status || (k === "traversal" && got.status === 404))
          && typeof got.error === "string" && got.error.includes(needle),
        JSON.stringify(got));
    }
    const health = await page.evaluate(async () => (await fetch("/api/health")).json());
    check("server healthy after the bad inputs", health.status === "ok", JSON.stringify(health));
  } finally {
    await browser.close();
    proc.kill("SIGTERM");
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().then(
  () => {
    console.log(`browser: ${passed} passed, ${failed} failed`);
    process.exit(failed === 0 && passed > 0 ? 0 : 1);
  },
  (e) => {
    console.log("FAIL " + (e && e.stack ? e.stack : e));
    console.log(`browser: ${passed} passed, ${failed + 1} failed`);
    process.exit(1);
  },
);
