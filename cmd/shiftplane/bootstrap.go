package main

import (
	"github.com/spf13/cobra"

	envoyconfigs "github.com/shiftplane/shiftplane/envoy-configs"
)

// bootstrapCmd prints the Envoy bootstrap of one node: the template the
// demo and the e2e harness render (envoy-configs/bootstrap.yaml.tmpl).
func bootstrapCmd() *cobra.Command {
	b := envoyconfigs.Default()
	var xds []string
	var tls envoyconfigs.TLS
	cmd := &cobra.Command{
		Use:   "bootstrap --node-id ID [--cluster C] [--xds ADDR]... [--admin-port N] [--delta] [--tls-cert F --tls-key F --tls-ca F]",
		Short: "Print a ready Envoy bootstrap that connects one Envoy to shiftplane over ADS",
		Long: `Print the Envoy bootstrap (YAML) of one Envoy: its node id and fleet
cluster, the ADS connection to shiftplane's xds.address (state of the world, or
delta with --delta) and its admin port on 127.0.0.1. Every Envoy needs its own
--node-id: shiftplane tracks ACKs per node. Repeat --xds to list every replica
of an HA shiftplane (store.backend: etcd): the Envoy may connect to any.`,
		Example: `  shiftplane bootstrap --node-id edge-1 > envoy-1.yaml && envoy -c envoy-1.yaml
  shiftplane bootstrap --node-id edge-2 --admin-port 9902 --xds 10.0.0.5:18000 --delta
  shiftplane bootstrap --node-id edge-3 --xds 10.0.0.5:18000 --xds 10.0.0.6:18000 --xds 10.0.0.7:18000
  shiftplane bootstrap --node-id edge-4 --xds 10.0.0.5:18000 \
      --tls-cert /etc/envoy/edge-4.crt --tls-key /etc/envoy/edge-4.key --tls-ca /etc/envoy/ca.crt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch len(xds) {
			case 0:
			case 1:
				b.XDSAddress = xds[0]
			default:
				b.XDSAddresses = xds
			}
			if tls.Cert != "" || tls.Key != "" || tls.CA != "" {
				b.TLS = &tls
			}
			out, err := b.Render()
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&b.NodeID, "node-id", "", "node.id, unique per Envoy (required)")
	fs.StringVar(&b.Cluster, "cluster", b.Cluster, "node.cluster: the fleet's name")
	fs.StringArrayVar(&xds, "xds", nil, "shiftplane's xds.address, IP:port (the xds_cluster is STATIC: no host names); repeat for HA replicas (default "+envoyconfigs.DefaultXDSAddress+")")
	fs.IntVar(&b.AdminPort, "admin-port", b.AdminPort, "Envoy admin port on 127.0.0.1 (0: the kernel picks)")
	fs.BoolVar(&b.UseDelta, "delta", false, "use incremental (delta) ADS instead of state of the world")
	fs.StringVar(&tls.Cert, "tls-cert", "", "mTLS to xds.address: the Envoy's client certificate file (its SAN names --node-id)")
	fs.StringVar(&tls.Key, "tls-key", "", "mTLS: the client certificate's key file")
	fs.StringVar(&tls.CA, "tls-ca", "", "mTLS: CA file shiftplane's xds.tls.cert chains to")
	fs.StringVar(&tls.SNI, "tls-sni", "", "mTLS: server name to send (optional)")
	cmd.MarkFlagsRequiredTogether("tls-cert", "tls-key", "tls-ca")
	_ = cmd.MarkFlagRequired("node-id")
	return cmd
}
