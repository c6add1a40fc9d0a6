package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

var names = []string{"X-Keyward-Key-Id", "X-Keyward-Owner", "X-Keyward-Scopes",
	"X-Keyward-Env", "X-Keyward-Plan", "X-Keyward-Auth"}

// verify: path as received, without the query (strings.Split(r.RequestURI, "?")[0]).
func verify(h http.Header, method, path string, secret []byte) bool {
	f := map[string]string{}
	for _, p := range strings.Split(h.Get("X-Keyward-Signature"), ",") {
		k, v, _ := strings.Cut(p, "=")
		f[k] = v
	}
	t, err := strconv.ParseInt(f["t"], 10, 64)
	if age := time.Now().Unix() - t; err != nil || age < -60 || age > 300 {
		return false
	}
	lines := []string{f["t"], method, path}
	for _, n := range names {
		lines = append(lines, h.Get(n))
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(strings.Join(lines, "\n")))
	return hmac.Equal([]byte(hex.EncodeToString(mac.Sum(nil))), []byte(f["v1"]))
}

// echo '{"headers":{…},"method":"GET","path":"/x"}' | go run verify.go
func main() {
	var req struct {
		Headers      map[string]string
		Method, Path string
	}
	if json.NewDecoder(os.Stdin).Decode(&req) != nil {
		os.Exit(2)
	}
	h := http.Header{}
	for k, v := range req.Headers {
		h.Set(k, v)
	}
	if !verify(h, req.Method, req.Path, []byte(os.Getenv("KEYWARD_SIGNING_SECRET"))) {
		os.Exit(1)
	}
}
