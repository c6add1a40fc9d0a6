const crypto = require("crypto");

const NAMES = ["x-keyward-key-id", "x-keyward-owner", "x-keyward-scopes",
  "x-keyward-env", "x-keyward-plan", "x-keyward-auth"];

// headers: Node's req.headers (lowercase names); path: as received, without the query.
function verify(headers, method, path, secret, maxAge = 300) {
  const f = Object.fromEntries((headers["x-keyward-signature"] || "").split(",").map((p) => p.split("=")));
  const age = Date.now() / 1000 - Number(f.t);
  if (!/^\d+$/.test(f.t || "") || age < -60 || age > maxAge) return false;
  const msg = [f.t, method, path, ...NAMES.map((n) => headers[n] || "")].join("\n");
  const mac = Buffer.from(crypto.createHmac("sha256", secret).update(msg, "latin1").digest("hex"));
  const got = Buffer.from(String(f.v1 || ""));
  return got.length === mac.length && crypto.timingSafeEqual(got, mac);
}
module.exports = { verify };

if (require.main === module) { // echo '{"headers":{…},"method":"GET","path":"/x"}' | node verify.js
  const req = JSON.parse(require("fs").readFileSync(0, "utf8"));
  process.exit(verify(req.headers, req.method, req.path, process.env.KEYWARD_SIGNING_SECRET) ? 0 : 1);
}
