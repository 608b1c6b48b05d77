#!/usr/bin/env bash
# Example PKI for deploy/: a CA, the proxy's server certificate and one SPIFFE client certificate.
#
#   deploy/tls/make-certs.sh [DIR]      # DIR defaults to this script's folder (deploy/tls)
#
# Writes ca.crt (client CA bundle and the clients' trusted root), tls.crt/tls.key (the server) and
# client.crt/client.key (a caller). A CA already in DIR is reused, so a re-run reissues the
# leaf certificates without invalidating other clients. Keys are created mode 0600.
# Environment:
#   SERVER_SANS  subjectAltName of the server certificate (names clients dial)
#   CLIENT_ID    the client's SPIFFE ID: a principal that policies/data.json grants
#   DAYS         validity of the leaf certificates (the CA gets ten times as long)
set -euo pipefail

dir=${1:-$(dirname "$0")}
service=imaging-proxy.default.svc  # the Kubernetes Service in namespace "default"
sans=${SERVER_SANS:-DNS:imaging-proxy,DNS:$service,DNS:$service.cluster.local,DNS:localhost,IP:127.0.0.1}
client_id=${CLIENT_ID:-spiffe://hospital.example/ns/imaging/sa/admin}
days=${DAYS:-365}

mkdir -p "$dir"
cd "$dir"
umask 077

serial() { echo "0x$(openssl rand -hex 16)"; }

# quiet COMMAND...: openssl's chatter only when it fails
quiet() {
  local out
  out=$("$@" 2>&1) || { echo "$out" >&2; return 1; }
}

# issue NAME SUBJECT EXTENSIONS: a P-256 key and a certificate signed by the CA
issue() {
  quiet openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
    -subj "$2" -out "$1.csr"
  quiet openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "$(serial)" \
    -days "$days" -out "$1.crt" \
    -extfile <(printf '%s\n' "basicConstraints = critical, CA:FALSE" "$3")
  rm "$1.csr"
  chmod 0644 "$1.crt"
}

if [[ ! -f ca.key || ! -f ca.crt ]]; then
  quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout ca.key -out ca.crt -subj "/CN=imaging-proxy example CA" -days "$((days * 10))" \
    -set_serial "$(serial)" \
    -addext "basicConstraints = critical, CA:TRUE" \
    -addext "keyUsage = critical, keyCertSign, cRLSign"
  chmod 0644 ca.crt
fi

issue tls "/CN=imaging-proxy" "extendedKeyUsage = serverAuth
keyUsage = critical, digitalSignature
subjectAltName = $sans"
issue client "/CN=${client_id##*/}" "extendedKeyUsage = clientAuth
keyUsage = critical, digitalSignature
subjectAltName = URI:$client_id"

openssl verify -CAfile ca.crt tls.crt client.crt >/dev/null
echo "wrote ca.crt, tls.crt/tls.key and client.crt/client.key ($client_id) into $(pwd)"
