package main

import (
	"fmt"
	"sync"
	"time"

	"github.com/shiftplane/shiftplane/policy"
	"github.com/shiftplane/shiftplane/policy/dashboard"
	"github.com/shiftplane/shiftplane/policy/signal"
)

// haEngine gives the dashboard and the notifier the engine of whichever
// term this replica leads. On a follower it lists nothing and refuses
// actions, naming the leader; a subscription follows the engine from term
// to term.
type haEngine struct{ r *haReplica }

func (h haEngine) current() (*policy.Engine, error) {
	if e := h.r.currentEngine(); e != nil {
		return e, nil
	}
	l, _ := h.r.elector.Leader()
	return nil, fmt.Errorf("%w: this replica (%s) is not the leader; the leader is %s", policy.ErrFailedPrecondition, h.r.id, l)
}

func (h haEngine) List() []policy.Status {
	if e, err := h.current(); err == nil {
		return e.List()
	}
	return nil
}

func (h haEngine) Get(name string) (policy.Status, error) {
	e, err := h.current()
	if err != nil {
		return policy.Status{}, err
	}
	return e.Get(name)
}

func (h haEngine) History(name string, limit int) ([]policy.Event, error) {
	e, err := h.current()
	if err != nil {
		return nil, err
	}
	return e.History(name, limit)
}

func (h haEngine) op(f func(*policy.Engine) (policy.Status, error)) (policy.Status, error) {
	e, err := h.current()
	if err != nil {
		return policy.Status{}, err
	}
	return f(e)
}

func (h haEngine) Pause(name string, opts ...policy.OpOption) (policy.Status, error) {
	return h.op(func(e *policy.Engine) (policy.Status, error) { return e.Pause(name, opts...) })
}

func (h haEngine) Resume(name string, opts ...policy.OpOption) (policy.Status, error) {
	return h.op(func(e *policy.Engine) (policy.Status, error) { return e.Resume(name, opts...) })
}

func (h haEngine) Promote(name string, opts ...policy.OpOption) (policy.Status, error) {
	return h.op(func(e *policy.Engine) (policy.Status, error) { return e.Promote(name, opts...) })
}

func (h haEngine) Abort(name string, opts ...policy.OpOption) (policy.Status, error) {
	return h.op(func(e *policy.Engine) (policy.Status, error) { return e.Abort(name, opts...) })
}

// Subscribe forwards the updates of the engine this replica runs, and
// subscribes again to the next term's engine when leadership moves.
func (h haEngine) Subscribe() (<-chan policy.Update, func()) {
	out := make(chan policy.Update, 256)
	stop := make(chan struct{})
	go func() {
		defer close(out)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			e := h.r.currentEngine()
			if e == nil {
				select {
				case <-stop:
					return
				case <-tick.C:
					continue
				}
			}
			updates, cancel := e.Subscribe()
		forward:
			for {
				select {
				case <-stop:
					cancel()
					return
				case u, ok := <-updates:
					if !ok {
						break forward
					}
					select {
					case out <- u:
					default: // a slow reader misses updates, as with the engine itself
					}
				case <-tick.C:
					if h.r.currentEngine() != e {
						break forward
					}
				}
			}
			cancel()
		}
	}()
	var once sync.Once
	return out, func() { once.Do(func() { close(stop) }) }
}

var _ dashboard.Engine = haEngine{}

// haDashboard is the dashboard every replica serves: the leader's rollouts
// and the union fleet (with each node's replica).
func (r *haReplica) haDashboard(cfg Config) (*dashboard.Dashboard, error) {
	token, err := apiToken(cfg)
	if err != nil {
		return nil, err
	}
	dash := dashboard.New(dashboard.Options{
		Engine: haEngine{r: r},
		Fleet:  haNodes{view: r.view, sink: r.deps.sink},
		Stats:  []signal.StatsSource{r.view},
		Auth: dashboard.Auth{
			TokenHash:      token,
			Open:           token == nil && cfg.API.TLS.ClientCA == "" && isLoopback(cfg.API.Address) && isLoopback(cfg.HTTP.Address),
			RequireForRead: !isLoopback(cfg.HTTP.Address),
			Limiter:        limiterFor(r.deps.auth),
		},
		Log: r.log,
	})
	return dash, nil
}
