package hcm_test

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2BenchConn is a raw HTTP/2 client connection that keeps a number of GETs
// in flight (h2load's -m), sending a new one as each response ends.
type h2BenchConn struct {
	nc     net.Conn
	fr     *http2.Framer
	block  []byte
	nextID uint32
	wbuf   bytes.Buffer
}

// h2RequestBlock is a GET's header block, HPACK-encoded without the dynamic
// table, so that the same bytes serve every request.
func h2RequestBlock(authority, path string) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	enc.SetMaxDynamicTableSizeLimit(0)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", authority}, {":path", path},
		{"user-agent", "h2bench"}, {"accept", "*/*"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return buf.Bytes()
}

func dialH2Bench(tb testing.TB, addr string) *h2BenchConn {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { nc.Close() })
	c := &h2BenchConn{nc: nc, block: h2RequestBlock(addr, "/"), nextID: 1}
	c.fr = http2.NewFramer(&c.wbuf, nc)
	c.fr.SetReuseFrames()
	c.wbuf.WriteString(http2.ClientPreface)
	_ = c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	_ = c.fr.WriteWindowUpdate(0, 1<<31-1-65535)
	if _, err := nc.Write(c.wbuf.Bytes()); err != nil {
		tb.Fatal(err)
	}
	c.wbuf.Reset()
	return c
}

// send writes n requests in one write.
func (c *h2BenchConn) send(n int) error {
	c.wbuf.Reset()
	for range n {
		_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: c.nextID, BlockFragment: c.block, EndStream: true, EndHeaders: true})
		c.nextID += 2
	}
	_, err := c.nc.Write(c.wbuf.Bytes())
	return err
}

// run keeps inflight requests going until *left runs out, then waits for
// the last responses.
func (c *h2BenchConn) run(tb testing.TB, inflight int, left *atomic.Int64) {
	take := func(n int) int {
		k := 0
		for k < n && left.Add(-1) >= 0 {
			k++
		}
		return k
	}
	pending := take(inflight)
	if err := c.send(pending); err != nil {
		tb.Error(err)
		return
	}
	consumed := 0
	for pending > 0 {
		f, err := c.fr.ReadFrame()
		if err != nil {
			tb.Error(err)
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.wbuf.Reset()
				_ = c.fr.WriteSettingsAck()
				if _, err := c.nc.Write(c.wbuf.Bytes()); err != nil {
					tb.Error(err)
					return
				}
			}
			continue
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			tb.Errorf("unexpected %v", f)
			return
		case *http2.DataFrame:
			consumed += len(f.Data())
		}
		if !f.Header().Flags.Has(http2.FlagDataEndStream) || (f.Header().Type != http2.FrameData && f.Header().Type != http2.FrameHeaders) {
			continue
		}
		pending--
		if consumed > 1<<30 {
			c.wbuf.Reset()
			_ = c.fr.WriteWindowUpdate(0, uint32(consumed))
			if _, err := c.nc.Write(c.wbuf.Bytes()); err != nil {
				tb.Error(err)
				return
			}
			consumed = 0
		}
		if k := take(1); k > 0 {
			pending += k
			if err := c.send(k); err != nil {
				tb.Error(err)
				return
			}
		}
	}
}

// BenchmarkProxyH2: small GETs through skiff's HTTP connection manager and
// router, h2c (prior knowledge) downstream, HTTP/1.1 upstream, as the bench's
// h2c scenario (h2load -c10 -m5) does: 10 connections with 5 streams each in
// flight, over loopback, everything in process. ns/op is wall time per
// request at that concurrency.
func BenchmarkProxyH2(b *testing.B) {
	up := rawUpstream(b, upstreamResp)
	e := newEnv(b, hcmYAML("backend", "codec_type: HTTP2\n"), cluster(b, "backend", false, up))
	const conns, streams = 10, 5
	cs := make([]*h2BenchConn, conns)
	for i := range cs {
		cs[i] = dialH2Bench(b, e.addr)
	}
	runAll := func(n int) {
		var left atomic.Int64
		left.Store(int64(n))
		var wg sync.WaitGroup
		for _, c := range cs {
			wg.Go(func() { c.run(b, streams, &left) })
		}
		wg.Wait()
	}
	runAll(conns * streams * 4)
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuTime()
	runAll(b.N)
	reportCPU(b, cpu)
}

// cpuTime is the CPU time (user and system) the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time per op since start (client, proxy and
// upstream together): less sensitive to a busy machine than ns/op.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkProxyH1Conns50: BenchmarkProxyH1KeepAlive on 50 client
// connections at once, as the bench's h1ka scenario (wrk -c50) has it.
func BenchmarkProxyH1Conns50(b *testing.B) {
	const conns = 50
	up := rawUpstream(b, upstreamResp)
	e := newEnv(b, hcmYAML("backend", ""), cluster(b, "backend", false, up))
	rts := make([]func(), conns)
	for i := range rts {
		rts[i] = h1RoundTrip(b, e.addr)
	}
	for _, rt := range rts {
		rt()
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuTime()
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	for _, rt := range rts {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				rt()
			}
		})
	}
	wg.Wait()
	reportCPU(b, cpu)
}

// h1RoundTrip is proxyRoundTrip's client on a connection of its own to addr.
func h1RoundTrip(tb testing.TB, addr string) func() {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	req := []byte(benchRequest)
	buf := make([]byte, 4096)
	return func() {
		if _, err := c.Write(req); err != nil {
			tb.Error(err)
			return
		}
		n := 0
		for {
			m, err := c.Read(buf[n:])
			n += m
			if i := bytes.Index(buf[:n], []byte("\r\n\r\n")); i >= 0 && n-(i+4) >= 64 {
				break
			}
			if err != nil {
				tb.Error(err)
				return
			}
		}
		if !bytes.HasPrefix(buf, []byte("HTTP/1.1 200 OK\r\n")) {
			tb.Errorf("response %q", buf[:n])
		}
	}
}
