package policy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"time"
)

// CommandHooks runs exec and webhook hooks for real. Exec hooks run only
// when AllowExec is set; webhooks only to AllowHosts (loopback by default).
// The check is repeated here, not only in validation, because a plan stored
// under an older server config must not run a command this config forbids.
type CommandHooks struct {
	AllowExec  bool
	AllowHosts []string
	Client     *http.Client
}

// Run implements HookRunner.
func (c CommandHooks) Run(ctx context.Context, h Hook, status []byte) (string, error) {
	switch {
	case len(h.Exec) > 0:
		if !c.AllowExec {
			return "", errors.New("exec hooks are disabled on this server (hooks.allowExec)")
		}
		cmd := exec.CommandContext(ctx, h.Exec[0], h.Exec[1:]...)
		cmd.Stdin = bytes.NewReader(status)
		cmd.Env = append(cmd.Environ(), "SHIFTPLANE_STATUS="+string(status))
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			return boundOutput(string(out)), fmt.Errorf("exec %q: %w", h.Exec[0], ctx.Err())
		}
		if err != nil {
			return boundOutput(string(out)), fmt.Errorf("exec %q: %w", h.Exec[0], err)
		}
		return boundOutput(string(out)), nil
	case h.Webhook != nil:
		return c.webhook(ctx, h, status)
	}
	return "", errors.New("hook has neither exec nor webhook")
}

// maxRedirects bounds the hops a webhook may be redirected through.
const maxRedirects = 3

// errRedirect marks a redirect the hook refused; it is not retried.
var errRedirect = errors.New("redirect refused")

// webhook POSTs status to the hook's URL, retrying network errors and 5xx
// answers up to h.Retries times with a doubling wait that never runs past
// ctx's deadline (the hook's timeout). A 4xx, a refused redirect or the end
// of ctx ends it at once.
func (c CommandHooks) webhook(ctx context.Context, h Hook, status []byte) (string, error) {
	u, err := url.Parse(h.Webhook.URL)
	if err != nil {
		return "", fmt.Errorf("webhook url: %w", err)
	}
	if !HostAllowed(u.Hostname(), c.AllowHosts) {
		return "", fmt.Errorf("webhook host %q is not in hooks.allowHosts", u.Hostname())
	}
	client := c.client()
	wait := h.RetryBackoff.D()
	if wait <= 0 {
		wait = DefaultRetryBackoff
	}
	for attempt := 0; ; attempt++ {
		out, err, retry := c.post(ctx, client, h.Webhook, status)
		if err == nil || !retry || attempt >= h.Retries {
			if err != nil && attempt > 0 {
				err = fmt.Errorf("%w (after %d attempts)", err, attempt+1)
			}
			return out, err
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return out, fmt.Errorf("%w (after %d attempts; the hook's timeout ends before the next retry in %s)", err, attempt+1, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return out, fmt.Errorf("%w (after %d attempts; %w)", err, attempt+1, ctx.Err())
		case <-t.C:
		}
		wait *= 2
	}
}

// post makes one attempt; retry says whether another attempt may help.
func (c CommandHooks) post(ctx context.Context, client *http.Client, w *Webhook, status []byte) (out string, err error, retry bool) {
	hookCtx := ctx
	if t := w.Timeout.D(); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(status))
	if err != nil {
		return "", err, false
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		// A refused redirect or the end of the whole hook is final; a
		// network error or this attempt's own timeout may pass.
		final := errors.Is(err, errRedirect) || hookCtx.Err() != nil
		return "", fmt.Errorf("webhook %s: %w", w.URL, err), !final
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxHookOutput))
	out = strings.TrimSpace(string(body))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return out, fmt.Errorf("webhook %s: status %d", w.URL, resp.StatusCode), resp.StatusCode >= 500
	}
	return out, nil, false
}

// client is c.Client (or the default) with redirects limited: each hop must
// go to an allowed host, never from https down to http, at most
// maxRedirects of them.
func (c CommandHooks) client() *http.Client {
	var cl http.Client
	if c.Client != nil {
		cl = *c.Client
	}
	cl.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) > maxRedirects {
			return fmt.Errorf("%w: more than %d redirects", errRedirect, maxRedirects)
		}
		if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
			return fmt.Errorf("%w: to %q, not http or https", errRedirect, req.URL.Redacted())
		}
		if prev := via[len(via)-1]; prev.URL.Scheme == "https" && req.URL.Scheme != "https" {
			return fmt.Errorf("%w: from https down to %s", errRedirect, req.URL.Redacted())
		}
		if !HostAllowed(req.URL.Hostname(), c.AllowHosts) {
			return fmt.Errorf("%w: to host %q, not in hooks.allowHosts", errRedirect, req.URL.Hostname())
		}
		return nil
	}
	return &cl
}
