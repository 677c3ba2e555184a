package listener

import (
	"net"
	"sync"
	"time"
)

// workerIdle is how long a worker waits for another connection before it
// goes. Serving each connection on a goroutine of its own cost its start and
// the growth of its stack down the filter chain: about 5 % of skiff's CPU
// with a new connection per request (h1close of ../shared/bench).
const workerIdle = time.Second

// workers hands accepted connections to idle connection goroutines, the most
// recently idle first (its stack is the warmest), and starts a goroutine when
// none is idle. A worker waits on a channel of its own, so a hand-over is one
// send to one receiver, with no select and no timer per connection: the idle
// ones are let go by one timer for all, at most workerIdle after they last
// served.
type workers struct {
	mu    sync.Mutex
	idle  []*worker // a stack: idle[len-1] went idle last
	reap  *time.Timer
	armed bool // reap will run
	done  bool // no more hand-overs; idle workers have been let go
}

type worker struct {
	next  chan net.Conn // buffered: a hand-over never waits; nil means go
	since time.Time     // when it last went idle
}

// handOff gives c to an idle worker and reports true, or false when none is
// idle (the caller then starts one).
func (ws *workers) handOff(c net.Conn) bool {
	ws.mu.Lock()
	n := len(ws.idle)
	if n == 0 || ws.done {
		ws.mu.Unlock()
		return false
	}
	w := ws.idle[n-1]
	ws.idle[n-1] = nil
	ws.idle = ws.idle[:n-1]
	ws.mu.Unlock()
	w.next <- c
	return true
}

// wait makes w idle until it is handed a connection, which it returns, or is
// let go (nil).
func (ws *workers) wait(w *worker) net.Conn {
	now := time.Now()
	ws.mu.Lock()
	if ws.done {
		ws.mu.Unlock()
		return nil
	}
	w.since = now
	ws.idle = append(ws.idle, w)
	if !ws.armed {
		ws.armed = true
		if ws.reap == nil {
			ws.reap = time.AfterFunc(workerIdle, ws.reapIdle)
		} else {
			ws.reap.Reset(workerIdle)
		}
	}
	ws.mu.Unlock()
	return <-w.next
}

// reapIdle lets go the workers idle for workerIdle or longer (those at the
// bottom of the stack) and runs again when the next would be.
func (ws *workers) reapIdle() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.armed = false
	if ws.done {
		return
	}
	now := time.Now()
	i := 0
	for ; i < len(ws.idle) && now.Sub(ws.idle[i].since) >= workerIdle; i++ {
		ws.idle[i].next <- nil
	}
	ws.idle = append(ws.idle[:0], ws.idle[i:]...)
	clear(ws.idle[len(ws.idle):cap(ws.idle)])
	if len(ws.idle) > 0 {
		ws.armed = true
		ws.reap.Reset(workerIdle - now.Sub(ws.idle[0].since))
	}
}

// close lets every idle worker go and makes later hand-overs fail, so that
// workers go once they have served their connection.
func (ws *workers) close() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.done = true
	for _, w := range ws.idle {
		w.next <- nil
	}
	ws.idle = nil
	if ws.reap != nil {
		ws.reap.Stop()
	}
}
