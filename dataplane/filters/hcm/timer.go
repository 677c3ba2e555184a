package hcm

import "time"

// lazyTimer is one of a stream's timeouts (idle, request, duration), kept
// cheap for streams reused exchange after exchange: it is set only when it
// is not running or would fire too late, and when it fires its function
// looks at the deadline it serves and either calls again for the rest or
// done. An exchange that finishes in time thus costs no timer operation. The
// stream's mutex guards it, in its methods and in the function.
type lazyTimer struct {
	t       *time.Timer
	f       func()    // runs when the timer fires
	running bool      // set, or its f is running
	fire    time.Time // when the running timer fires
}

// by makes the timer fire at at or before: it starts a timer that is not
// running, brings forward one that would fire later, and leaves one that
// fires sooner (its f will find the deadline still ahead and go again).
func (l *lazyTimer) by(at time.Time) {
	switch {
	case !l.running:
		l.running = true
	case at.Before(l.fire) && l.t.Stop():
		// It would fire too late: again, sooner. (If Stop fails, f is
		// running and will find the new deadline.)
	default:
		return
	}
	l.again(at)
}

// again sets the timer for at; f calls it for a deadline still ahead.
func (l *lazyTimer) again(at time.Time) {
	l.fire = at
	d := time.Until(at)
	if l.t == nil {
		l.t = time.AfterFunc(d, l.f)
	} else {
		l.t.Reset(d)
	}
}

// done notes that the timer stopped: f calls it when nothing is left to
// wait for.
func (l *lazyTimer) done() { l.running = false }

// stop stops the timer for good (the stream is closed).
func (l *lazyTimer) stop() {
	if l.t != nil {
		l.t.Stop()
	}
}
