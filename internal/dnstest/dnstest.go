// Package dnstest is a DNS server on loopback for tests: it answers A and
// AAAA queries, over UDP and TCP on the same port, from a table the test
// changes while it runs.
package dnstest

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// Server is a running DNS server. Names it has no record of get NXDOMAIN.
type Server struct {
	// Addr is where it listens, for UDP and TCP.
	Addr netip.AddrPort

	udp *net.UDPConn
	tcp *net.TCPListener
	wg  sync.WaitGroup

	mu      sync.Mutex
	records map[string]record // by lower-case absolute name
	fail    bool

	queries atomic.Int64
	tcpSeen atomic.Int64
}

type record struct {
	ttl   uint32
	addrs []netip.Addr
}

// Start runs a server on 127.0.0.1 until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{records: map[string]record{}}
	var err error
	for range 10 { // a free UDP port whose TCP twin is free too
		if s.udp, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
			t.Fatal(err)
		}
		s.Addr = s.udp.LocalAddr().(*net.UDPAddr).AddrPort()
		if s.tcp, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(s.Addr)); err == nil {
			break
		}
		s.udp.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	s.wg.Add(2)
	go s.serveUDP()
	go s.serveTCP()
	t.Cleanup(func() {
		s.udp.Close()
		s.tcp.Close()
		s.wg.Wait()
	})
	return s
}

// Set makes name resolve to addrs (A and AAAA records by family) with ttl
// seconds. No addresses: the name exists with no address (NODATA).
func (s *Server) Set(name string, ttl uint32, addrs ...netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records[key(name)] = record{ttl: ttl, addrs: addrs}
}

// Remove makes name unknown (NXDOMAIN).
func (s *Server) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, key(name))
}

// Fail makes every answer SERVFAIL while on is true.
func (s *Server) Fail(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = on
}

// Queries is how many queries have been answered; TCPQueries how many of
// them came over TCP.
func (s *Server) Queries() int64    { return s.queries.Load() }
func (s *Server) TCPQueries() int64 { return s.tcpSeen.Load() }

func key(name string) string {
	name = strings.ToLower(name)
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

func (s *Server) serveUDP() {
	defer s.wg.Done()
	buf := make([]byte, 4096)
	for {
		n, from, err := s.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if resp := s.answer(buf[:n]); resp != nil {
			s.udp.WriteToUDPAddrPort(resp, from) //nolint:errcheck // the client retries
		}
	}
}

func (s *Server) serveTCP() {
	defer s.wg.Done()
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			for {
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err != nil {
					return
				}
				msg := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := io.ReadFull(c, msg); err != nil {
					return
				}
				s.tcpSeen.Add(1)
				resp := s.answer(msg)
				if resp == nil {
					return
				}
				out := binary.BigEndian.AppendUint16(nil, uint16(len(resp)))
				if _, err := c.Write(append(out, resp...)); err != nil {
					return
				}
			}
		}()
	}
}

// answer builds the response to a query, or nil for a malformed one.
func (s *Server) answer(query []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	s.queries.Add(1)
	s.mu.Lock()
	rec, known := s.records[strings.ToLower(q.Name.String())]
	fail := s.fail
	s.mu.Unlock()

	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	switch {
	case fail:
		rh.RCode = dnsmessage.RCodeServerFailure
	case !known:
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil
	}
	if err := b.Question(q); err != nil {
		return nil
	}
	if err := b.StartAnswers(); err != nil {
		return nil
	}
	if rh.RCode == dnsmessage.RCodeSuccess {
		for _, a := range rec.addrs {
			if err := s.addAnswer(&b, q, rec.ttl, a); err != nil {
				return nil
			}
		}
	}
	msg, err := b.Finish()
	if err != nil {
		return nil
	}
	return msg
}

// addAnswer adds a as the answer to q if it is of q's type.
func (s *Server) addAnswer(b *dnsmessage.Builder, q dnsmessage.Question, ttl uint32, a netip.Addr) error {
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: ttl}
	switch {
	case q.Type == dnsmessage.TypeA && a.Is4():
		return b.AResource(rh, dnsmessage.AResource{A: a.As4()})
	case q.Type == dnsmessage.TypeAAAA && a.Is6():
		return b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
	}
	return nil // another type: the name has none (NODATA)
}
