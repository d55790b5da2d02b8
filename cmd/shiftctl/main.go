// Command shiftctl drives shiftplane's policy API: apply plans, watch and
// steer rollouts, list the Envoy fleet.
//
//	shiftctl [--server ADDR] [--token T] VERB ...
//
// --server and --token default to $SHIFTCTL_SERVER and $SHIFTCTL_TOKEN.
// Exit status: 0 on success; 1 with a one-line reason on stderr when a call
// fails; 2 when `watch` sees the rollout end other than SUCCEEDED; 3 when
// `watch --timeout` passes first; 130 when interrupted (Ctrl-C).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/shiftplane/shiftplane/cmd/internal/buildinfo"
	"github.com/shiftplane/shiftplane/policy/api"
	shiftplanev1 "github.com/shiftplane/shiftplane/proto/shiftplane/v1"
)

// DefaultServer is shiftplane's default api.address.
const DefaultServer = "127.0.0.1:18001"

// Exit codes.
const (
	exitFailed         = 1 // a call or the input failed
	exitRolloutFailure = 2 // watch: the rollout ended ROLLED_BACK, ABORTED or FAILED
	exitTimeout        = 3 // watch: --timeout passed before the rollout ended
	exitInterrupted    = 130
)

// exitError carries an exit code other than exitFailed.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	fd := int(os.Stdout.Fd())
	tty := term.IsTerminal(fd)
	width := func() int {
		w, _, err := term.GetSize(fd)
		if err != nil {
			return 0
		}
		return w
	}
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, tty, width)
	stop()
	os.Exit(code)
}

// run executes one shiftctl command line and returns the exit code.
// width reports the terminal's columns (re-read on each redraw, so a
// resized window is followed); nil when not a terminal.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, tty bool, width ...func() int) int {
	a := &app{out: stdout, tty: tty}
	if len(width) > 0 {
		a.width = width[0]
	}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if a.conn != nil {
		_ = a.conn.Close()
	}
	if err == nil {
		return 0
	}
	if ctx.Err() != nil {
		// Ctrl-C or SIGTERM: the shell's convention, 128+SIGINT.
		fmt.Fprintln(stderr, "shiftctl: interrupted")
		return exitInterrupted
	}
	fmt.Fprintln(stderr, "shiftctl: "+oneLine(err.Error()))
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitFailed
}

// app holds the global flags and the connection of one invocation.
type app struct {
	server, token      string
	ca, cert, key, sni string
	timeout            time.Duration
	out                io.Writer
	tty                bool
	width              func() int
	conn               *grpc.ClientConn
	rollouts           shiftplanev1.RolloutServiceClient
	fleet              shiftplanev1.FleetServiceClient
	sources            shiftplanev1.SourceServiceClient
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "shiftctl [--server ADDR] [--token T] VERB",
		Short: "Drive shiftplane rollouts through its policy API",
		Long: `shiftctl drives shiftplane rollouts through its policy API.

--server and --token default to $SHIFTCTL_SERVER and $SHIFTCTL_TOKEN.
Exit status: 0 on success, 1 with a one-line reason when a call fails,
2 when watch sees the rollout end ROLLED_BACK, ABORTED or FAILED,
3 when watch --timeout passes first, 130 when interrupted.`,
		Example: `  shiftctl apply -f examples/checkout.yaml
  shiftctl watch checkout
  shiftctl get checkout
  shiftctl --server 10.0.0.5:18001 --token "$TOKEN" list -o wide
  source <(shiftctl completion bash)`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: a.connect,
	}
	fs := root.PersistentFlags()
	fs.StringVar(&a.server, "server", DefaultServer, "shiftplane policy API address host:port (env SHIFTCTL_SERVER)")
	fs.StringVar(&a.token, "token", "", "bearer token of the policy API (env SHIFTCTL_TOKEN)")
	fs.StringVar(&a.ca, "ca", "", "CA certificate (PEM) that the server's certificate must chain to; enables TLS")
	fs.StringVar(&a.cert, "cert", "", "client certificate (PEM) for mTLS; enables TLS")
	fs.StringVar(&a.key, "key", "", "client key (PEM) for mTLS")
	fs.StringVar(&a.sni, "tls-server-name", "", "server name to verify the server's certificate against (default: the --server host)")
	fs.DurationVar(&a.timeout, "timeout", 10*time.Second, "bound on each call (not on watch)")
	root.AddCommand(
		a.applyCmd(), a.getCmd(), a.listCmd(), a.watchCmd(),
		a.simpleCmd("pause", "Stop a rollout's schedule where it is", "paused"),
		a.simpleCmd("resume", "Continue a paused rollout, or pass a manual gate", "resumed"),
		a.simpleCmd("promote", "Skip the remaining steps: weight 100, then drain and withdraw the stable", "promoted"),
		a.simpleCmd("retry", "Restart an ABORTED, ROLLED_BACK or FAILED rollout from its first step", "restarted from step 1"),
		a.abortCmd(), a.deleteCmd(), a.historyCmd(), a.fleetCmd(), a.reportSignalCmd(), a.sourcesCmd(),
		buildinfo.Command("shiftctl"),
	)
	return root
}

// connect resolves the environment defaults and dials (lazily: the first
// call connects).
func (a *app) connect(cmd *cobra.Command, _ []string) error {
	fs := cmd.Flags()
	if !fs.Changed("server") {
		if v := os.Getenv("SHIFTCTL_SERVER"); v != "" {
			a.server = v
		}
	}
	if !fs.Changed("token") {
		a.token = os.Getenv("SHIFTCTL_TOKEN")
	}
	creds := insecure.NewCredentials()
	if a.ca != "" || a.cert != "" || a.key != "" {
		tc, err := a.tlsConfig()
		if err != nil {
			return err
		}
		creds = credentials.NewTLS(tc)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(api.MaxMessageBytes), grpc.MaxCallSendMsgSize(api.MaxMessageBytes))}
	if a.token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(a.token)))
	}
	conn, err := grpc.NewClient(a.server, opts...)
	if err != nil {
		return fmt.Errorf("--server %q: %w", a.server, err)
	}
	a.conn = conn
	a.rollouts = shiftplanev1.NewRolloutServiceClient(conn)
	a.fleet = shiftplanev1.NewFleetServiceClient(conn)
	a.sources = shiftplanev1.NewSourceServiceClient(conn)
	return nil
}

func (a *app) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: a.sni}
	if a.ca != "" {
		pem, err := os.ReadFile(a.ca)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca: %s holds no PEM certificate", a.ca)
		}
		tc.RootCAs = pool
	}
	if (a.cert == "") != (a.key == "") {
		return nil, errors.New("--cert and --key must be given together")
	}
	if a.cert != "" {
		c, err := tls.LoadX509KeyPair(a.cert, a.key)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, nil
}

// bearer sends `authorization: Bearer <token>` with every call. It does not
// insist on TLS: the API's default is loopback without TLS.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// callCtx bounds one unary call.
func (a *app) callCtx(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), a.timeout)
}

// callError turns a gRPC error into the one-line reason shiftctl prints.
func (a *app) callError(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Unavailable:
		return fmt.Errorf("cannot reach shiftplane at %s: %s", a.server, st.Message())
	case codes.Unauthenticated:
		return fmt.Errorf("unauthenticated: %s; give --token or set SHIFTCTL_TOKEN", st.Message())
	case codes.PermissionDenied:
		return fmt.Errorf("permission denied: %s", st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("shiftplane at %s did not answer within %s (--timeout)", a.server, a.timeout)
	case codes.Canceled:
		return errors.New("interrupted")
	case codes.Unimplemented:
		return fmt.Errorf("the server at %s does not offer this call: %s", a.server, st.Message())
	}
	return errors.New(st.Message())
}

// oneLine folds a multi-line message onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}

// nameArg requires exactly one argument, the rollout NAME.
func nameArg(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%s needs exactly one rollout NAME, got %d arguments", cmd.Name(), len(args))
	}
	return nil
}
