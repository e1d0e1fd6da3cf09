# shellcheck shell=bash
# Certificates and kubeconfigs for the local control plane (openssl only).
#
# Sourced by hack/cluster.sh. One throwaway CA signs the API server's serving certificate and
# a client certificate per component, so each component authenticates as the identity the
# bootstrap RBAC roles expect (system:kube-controller-manager, system:kube-scheduler) and the
# admin is in system:masters. Everything is regenerated on each fresh `up`.

# new_key PATH: an ECDSA P-256 private key (fast to generate, fine for TLS).
new_key() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# new_cert DIR NAME SUBJECT EXTENSIONS: DIR/NAME.{key,crt} signed by DIR/ca.{key,crt}.
new_cert() {
  local dir=$1 name=$2 subject=$3 extensions=$4
  new_key "$dir/$name.key"
  openssl req -new -key "$dir/$name.key" -subj "$subject" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 365 -out "$dir/$name.crt" -extfile <(printf '%b' "$extensions") 2>/dev/null
  rm -f "$dir/$name.csr"
}

# generate_pki DIR [IP]: CA, apiserver serving cert (also valid for IP, the real node's
# address the API server then listens on), client certs, service-account key pair.
generate_pki() {
  local dir=$1 extra_san=${2:+,IP:$2}
  local client='keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth'
  mkdir -p "$dir"
  new_key "$dir/ca.key"
  openssl req -x509 -new -key "$dir/ca.key" -subj "/CN=kubetune-local-ca" -days 365 \
    -out "$dir/ca.crt" 2>/dev/null
  new_cert "$dir" apiserver "/CN=kube-apiserver" \
    "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1$extra_san,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  new_cert "$dir" admin "/O=system:masters/CN=kubetune-admin" "$client"
  new_cert "$dir" controller-manager "/CN=system:kube-controller-manager" "$client"
  new_cert "$dir" scheduler "/CN=system:kube-scheduler" "$client"
  new_cert "$dir" kwok "/O=system:masters/CN=kwok-controller" "$client"
  # The API server's identity when it proxies to aggregated API servers (front proxy).
  new_cert "$dir" front-proxy-client "/CN=front-proxy-client" "$client"
  # Service-account tokens: the API server signs with the private key, verifies with the public.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/sa.key" 2>/dev/null
  openssl pkey -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
}

# write_kubeconfig OUT PKI_DIR NAME SERVER: a self-contained kubeconfig for DIR/NAME.{crt,key}.
write_kubeconfig() {
  local out=$1 dir=$2 name=$3 server=$4
  cat >"$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kubetune
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$dir/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 <"$dir/$name.crt")
    client-key-data: $(base64 -w0 <"$dir/$name.key")
contexts:
- name: kubetune
  context:
    cluster: kubetune
    user: $name
current-context: kubetune
EOF
  chmod 600 "$out"
}

# generate_node_pki DIR NODE IP: certificates of the real node, signed by the CA above.
#   kubelet                       client; system:node:NODE in system:nodes (Node authorizer)
#   kubelet-serving               the kubelet's HTTPS endpoint at IP (logs, exec, metrics)
#   kube-proxy                    client; system:kube-proxy (bootstrap role system:node-proxier)
#   coredns                       client; system:kubetune:coredns (ClusterRole in realnode.sh)
#   apiserver-kubelet-client      the API server calling kubelets (system:masters)
generate_node_pki() {
  local dir=$1 node=$2 ip=$3
  local client='keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth'
  new_cert "$dir" kubelet "/O=system:nodes/CN=system:node:$node" "$client"
  new_cert "$dir" kubelet-serving "/CN=$node" \
    "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:$ip,DNS:$node"
  new_cert "$dir" kube-proxy "/CN=system:kube-proxy" "$client"
  new_cert "$dir" coredns "/CN=system:kubetune:coredns" "$client"
  new_cert "$dir" apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
}
