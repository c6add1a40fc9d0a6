#!/usr/bin/env python3
"""Seed N API keys into Redis in keyward's layout (SPEC §4), for bench scripts.

    seed_keys.py N PREFIX KEYS_OUT | redis-cli -p PORT --pipe

Writes one plaintext key per line to KEYS_OUT (read by keys.lua) and the Redis
protocol for every record to stdout. Keys have the SPEC §4 shape and checksum:
kw_live_<32 base62><6 base62 CRC32 of everything before it>, so keyward runs
with `require_checksum: true` (the same encoding as ../shared/bench's
lib/gen_keys.py). Only SHA-256 hashes go to Redis, never a plaintext key.
"""
import hashlib
import random
import sys
import time
import zlib

ALPH = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def b62(n, width):
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(ALPH[r])
    return "".join(reversed(out)).rjust(width, "0")


def resp(*args):
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


def main():
    n, prefix, keys_out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    rng = random.Random(7)
    now = int(time.time())
    w = sys.stdout.buffer
    with open(keys_out, "w") as f:
        for i in range(n):
            body = "kw_live_" + "".join(rng.choice(ALPH) for _ in range(32))
            key = body + b62(zlib.crc32(body.encode()), 6)
            h = hashlib.sha256(key.encode()).hexdigest()
            kid, owner = f"key_{i:07d}", f"owner-{i % 1000:03d}"
            w.write(resp("HSET", f"{prefix}key:{h}", "id", kid, "name", f"bench {kid}",
                         "owner", owner, "env", "live", "scopes", "jobs:read jobs:write",
                         "plan", "bench", "created_at", now, "display_prefix", key[:12]))
            w.write(resp("SET", f"{prefix}id:{kid}", h))
            w.write(resp("SADD", f"{prefix}owner:{owner}", kid))
            f.write(key + "\n")


if __name__ == "__main__":
    main()
