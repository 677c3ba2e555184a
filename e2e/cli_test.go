package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemo runs 'skiff demo' and fetches its page through the proxy.
func TestDemo(t *testing.T) {
	t.Parallel()
	listen, xdsPort := freePort(t), freePort(t)
	upstreamPort := freePortPair(t)
	p := startProcess(t, []string{"demo", "--listen-port", strconv.Itoa(listen), "--upstream-port", strconv.Itoa(upstreamPort),
		"--xds-port", strconv.Itoa(xdsPort)}, procOpts{})

	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d/", listen)
	deadline := time.Now().Add(startTimeout)
	var body string
	for {
		b, err := get(client, url)
		if err == nil {
			body = b
			break
		}
		select {
		case <-p.Exited():
			t.Fatalf("skiff demo exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.HasPrefix(body, "Hello from the skiff demo upstream! (blue)") {
		t.Errorf("GET %s through the demo proxy: %q, want the demo upstream's greeting", url, body)
	}
	if !strings.Contains(p.Stdout(), strconv.Itoa(listen)) {
		t.Errorf("skiff demo's stdout does not mention its listen port %d:\n%s", listen, p.Stdout())
	}
	p.Stop(t)
}

func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s: %q", resp.Status, b)
	}
	return string(b), nil
}

// TestVersion checks 'skiff version' and its --version spelling.
func TestVersion(t *testing.T) {
	t.Parallel()
	for _, arg := range []string{"version", "--version"} {
		r := runSkiff(t, arg)
		if r.code != 0 {
			t.Errorf("skiff %s: exit status %d; stderr:\n%s", arg, r.code, r.stderr)
		}
		if want := "skiff " + testVersion + " "; !strings.HasPrefix(r.stdout, want) {
			t.Errorf("skiff %s printed %q, want a line starting with %q", arg, r.stdout, want)
		}
	}
}

// TestUsage checks the command line without a known command.
func TestUsage(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		code int
		out  func(result) string
	}{
		{nil, 2, func(r result) string { return r.stderr }},
		{[]string{"frobnicate"}, 2, func(r result) string { return r.stderr }},
		{[]string{"help"}, 0, func(r result) string { return r.stdout }},
	} {
		r := runSkiff(t, tt.args...)
		if r.code != tt.code {
			t.Errorf("skiff %v: exit status %d, want %d", tt.args, r.code, tt.code)
		}
		if out := tt.out(r); !strings.Contains(out, "skiff run -c FILE") {
			t.Errorf("skiff %v: output %q, want the usage", tt.args, out)
		}
	}
}
