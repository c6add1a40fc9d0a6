import hashlib, hmac, time

NAMES = ["x-keyward-key-id", "x-keyward-owner", "x-keyward-scopes",
         "x-keyward-env", "x-keyward-plan", "x-keyward-auth"]

def verify(headers, method, path, secret, max_age=300):
    """headers: dict, lowercase names; path: as received, without the query."""
    f = dict(p.partition("=")[::2] for p in headers.get("x-keyward-signature", "").split(","))
    t = f.get("t", "")
    if not (t.isascii() and t.isdigit()) or not -60 <= time.time() - int(t) <= max_age:
        return False
    msg = "\n".join([t, method, path] + [headers.get(n, "") for n in NAMES])
    mac = hmac.new(secret.encode(), msg.encode("latin-1"), hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, f.get("v1", ""))

if __name__ == "__main__":  # echo '{"headers":{…},"method":"GET","path":"/x"}' | python3 verify.py
    import json, os, sys
    req = json.load(sys.stdin)
    ok = verify(req["headers"], req["method"], req["path"], os.environ["KEYWARD_SIGNING_SECRET"])
    sys.exit(0 if ok else 1)
