// Command coredns is CoreDNS with only the plugins the local cluster's DNS needs.
//
// Upstream's main package (github.com/coredns/coredns) links every plugin, route53, azure,
// clouddns, etcd and tracing included, which would add minutes to the one `go build` of
// hack/lib/build.sh on a 2-core machine. This is upstream's own main (coremain.Run) with a
// short plugin list, the way CoreDNS documents building with a custom plugin set. The cluster
// serves one zone, the cluster domain, from the kubernetes plugin; there is no `forward`, so
// no name outside the cluster is ever looked up.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The plugins above, in upstream's order (core/dnsserver/zdirectives.go): the order in which
// they see a query.
func init() {
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "log", "cache", "kubernetes"}
}

func main() {
	coremain.Run()
}
