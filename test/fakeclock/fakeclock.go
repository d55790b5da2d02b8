// Package fakeclock is the one settable clock of the tests: it implements
// model.Clock (Now) and policy.AlarmClock (After fires when the clock is
// moved past the deadline), and its Now method value is the func()
// time.Time that components such as xds.Fleet take. Safe for concurrent use.
package fakeclock

import (
	"sync"
	"time"
)

// Clock is a clock that moves only when told.
type Clock struct {
	mu     sync.Mutex
	t      time.Time
	alarms map[*alarm]struct{}
}

type alarm struct {
	at time.Time
	ch chan time.Time
}

// New returns a clock at t.
func New(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
	c.fireLocked()
}

// Advance moves the clock by d and returns the new time.
func (c *Clock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	c.fireLocked()
	return c.t
}

// After returns a channel that receives the clock's time once it has been
// moved d on (at once for d <= 0), and a func that cancels it (true if it
// had not fired).
func (c *Clock) After(d time.Duration) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a := &alarm{at: c.t.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		a.ch <- c.t
		return a.ch, func() bool { return false }
	}
	if c.alarms == nil {
		c.alarms = map[*alarm]struct{}{}
	}
	c.alarms[a] = struct{}{}
	return a.ch, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, pending := c.alarms[a]
		delete(c.alarms, a)
		return pending
	}
}

func (c *Clock) fireLocked() {
	for a := range c.alarms {
		if !c.t.Before(a.at) {
			a.ch <- c.t
			delete(c.alarms, a)
		}
	}
}
