package route

import (
	"sync"
	"testing"
)

func TestProvider(t *testing.T) {
	p := NewProvider()
	s := p.Slot("web")
	if s.Table() != nil || s.Name() != "web" {
		t.Fatal("a new slot has a table")
	}
	a, err := Compile(parseRC(t, `{ name: web, virtual_hosts: [{ name: a, domains: ["*"] }] }`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Compile(parseRC(t, `{ name: web, virtual_hosts: [{ name: b, domains: ["*"] }] }`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	p.Set(map[string]*Table{"web": a, "other": b})
	if s.Table() != a || p.Get("other") != b || p.Slot("other").Table() != b {
		t.Error("Set did not reach the slots")
	}
	// Readers see one table or the other while an update swaps them.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if tb := s.Table(); tb != a && tb != b {
				t.Error("torn read")
				return
			}
		}
	})
	for range 1000 {
		p.Set(map[string]*Table{"web": b})
		p.Set(map[string]*Table{"web": a})
	}
	close(stop)
	wg.Wait()
	p.Set(map[string]*Table{"other": b})
	if s.Table() != nil || p.Get("web") != nil {
		t.Error("a name no longer set keeps its table")
	}
	if n := testing.AllocsPerRun(100, func() { _ = s.Table() }); n != 0 {
		t.Errorf("%v allocs per lookup", n)
	}
}
