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
		u, err := url.Parse(h.Webhook.URL)
		if err != nil {
			return "", fmt.Errorf("webhook url: %w", err)
		}
		if !HostAllowed(u.Hostname(), c.AllowHosts) {
			return "", fmt.Errorf("webhook host %q is not in hooks.allowHosts", u.Hostname())
		}
		if t := h.Webhook.Timeout.D(); t > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, t)
			defer cancel()
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.Webhook.URL, bytes.NewReader(status))
		if err != nil {
			return "", err
		}
		req.Header.Set("Content-Type", "application/json")
		client := c.Client
		if client == nil {
			client = http.DefaultClient
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", fmt.Errorf("webhook %s: %w", h.Webhook.URL, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxHookOutput))
		out := strings.TrimSpace(string(body))
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			return out, fmt.Errorf("webhook %s: status %d", h.Webhook.URL, resp.StatusCode)
		}
		return out, nil
	}
	return "", errors.New("hook has neither exec nor webhook")
}
