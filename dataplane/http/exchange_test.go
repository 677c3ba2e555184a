package http_test

import (
	"context"
	"errors"
	"testing"

	"github.com/skiffproxy/skiff/dataplane/http"
)

func TestResponseFlags(t *testing.T) {
	f := http.FlagNoHealthyUpstream | http.FlagUpstreamRequestTimeout | http.FlagUpstreamProtocolError
	if got := f.String(); got != "UH,UT,UPE" {
		t.Errorf("String %q", got)
	}
	if got := string(f.Append(nil, true)); got != "NoHealthyUpstream,UpstreamRequestTimeout,UpstreamProtocolError" {
		t.Errorf("long %q", got)
	}
	if http.ResponseFlag(0).String() != "-" {
		t.Error("no flags")
	}
	if http.ResetRefusedStream.String() != "REFUSED_STREAM" || http.ResetHTTP11Required.String() != "HTTP_1_1_REQUIRED" {
		t.Error("reset code names")
	}
}

// TestResponseFlagsInOrderSet: an exchange's %RESPONSE_FLAGS% come in the
// order they were set, as Envoy (since 1.30) renders them; a flag cleared
// since is left out, one set directly in ResponseFlags comes last.
func TestResponseFlagsInOrderSet(t *testing.T) {
	var si http.StreamInfo
	if got := string(si.AppendResponseFlags(nil, false)); got != "-" {
		t.Errorf("no flags: %q", got)
	}
	si.SetFlags(http.FlagDelayInjected)
	si.SetFlags(http.FlagUpstreamRetryLimitExceeded)
	si.SetFlags(http.FlagUpstreamConnectionFailure | http.FlagDelayInjected)
	si.SetFlags(http.FlagDownstreamConnectionTermination)
	if got := string(si.AppendResponseFlags(nil, false)); got != "DI,URX,UF,DC" {
		t.Errorf("flags %q, want DI,URX,UF,DC", got)
	}
	si.ResponseFlags &^= http.FlagUpstreamRetryLimitExceeded
	si.ResponseFlags |= http.FlagNoHealthyUpstream
	if got := string(si.AppendResponseFlags(nil, true)); got != "DelayInjected,UpstreamConnectionFailure,DownstreamConnectionTermination,NoHealthyUpstream" {
		t.Errorf("long flags %q", got)
	}
	buf := make([]byte, 0, 128)
	if allocs := testing.AllocsPerRun(100, func() { buf = si.AppendResponseFlags(buf[:0], false) }); allocs != 0 {
		t.Errorf("%v allocs", allocs)
	}
}

func TestHeaderHelpers(t *testing.T) {
	var h http.Header
	h.Add("a", "1")
	h.AddUint("content-length", 1234)
	h.Add("x-drop", "y")
	h.Add("b", "2")
	if h.Value("content-length") != "1234" {
		t.Errorf("AddUint: %q", h.Value("content-length"))
	}
	if n := h.DeleteFunc(func(name, _ string) bool { return name == "x-drop" || name == "a" }); n != 2 || h.Len() != 2 || h.Has("a") {
		t.Errorf("DeleteFunc removed %d, left %q", n, h.String())
	}
	if n := testing.AllocsPerRun(100, func() {
		h.Reset()
		h.Add("a", "1")
		h.AddUint("n", 42)
		h.DeleteFunc(func(name, _ string) bool { return name == "a" })
	}); n != 0 {
		t.Errorf("%v allocs", n)
	}
}

type interrupter struct{ got error }

func (i *interrupter) Interrupt(reason error) { i.got = reason }

func TestExchangeReuseAndInterrupt(t *testing.T) {
	s := &stream{}
	s.req.Add(http.Method, "GET")
	e := http.NewExchange(context.Background(), s)
	e.Response.Add(http.Status, "200")
	e.Info.ResponseCode = 200
	i := &interrupter{}
	if err := e.SetInterrupter(i); err != nil {
		t.Fatal(err)
	}
	reason := errors.New("timeout")
	e.Interrupt(reason)
	e.Interrupt(errors.New("second"))
	if i.got != reason || e.Interrupted() != reason {
		t.Errorf("interrupted with %v / %v", i.got, e.Interrupted())
	}
	if err := e.SetInterrupter(&interrupter{}); err != reason {
		t.Errorf("registering after the interruption: %v", err)
	}
	e.Reset(s)
	if e.Interrupted() != nil || e.Response.Len() != 0 || e.Info.ResponseCode != 0 || e.Request != s.Header() || e.Info.Protocol != "HTTP/1.1" {
		t.Errorf("Reset left state: %v %d %d", e.Interrupted(), e.Response.Len(), e.Info.ResponseCode)
	}
	if e.Context() != s.Context() {
		t.Error("after Reset, the exchange's context is not the stream's")
	}
	if n := testing.AllocsPerRun(100, func() { e.Reset(s) }); n != 0 {
		t.Errorf("%v allocs per Reset", n)
	}
}

// TestInterruptGen: an interrupt decided for one exchange (a timer of the
// connection manager's) does not reach the next one a reused Exchange
// serves.
func TestInterruptGen(t *testing.T) {
	s := &stream{}
	e := http.NewExchange(context.Background(), s)
	first := e.Gen()
	e.Reset(s)
	if e.Gen() == first {
		t.Fatal("Reset kept the generation")
	}
	i := &interrupter{}
	if err := e.SetInterrupter(i); err != nil {
		t.Fatal(err)
	}
	e.InterruptGen(first, errors.New("late timeout of the first exchange"))
	if i.got != nil || e.Interrupted() != nil {
		t.Errorf("the second exchange was interrupted by the first's: %v / %v", i.got, e.Interrupted())
	}
	reason := errors.New("timeout")
	e.InterruptGen(e.Gen(), reason)
	if i.got != reason || e.Interrupted() != reason {
		t.Errorf("its own generation: interrupted with %v / %v, want %v", i.got, e.Interrupted(), reason)
	}
}
