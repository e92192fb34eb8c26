#!/usr/bin/env bash
# Test certificates for the TLS tests (never for production): a test CA, a server
# certificate it signed, a client certificate it signed, and an unrelated CA.
#
#   deploy/test-ca.sh DIR SAN [OWNER] [CLIENT_CN]
#
# SAN is the server certificate's subjectAltName (e.g. "IP:127.0.0.1,DNS:localhost");
# CLIENT_CN the client certificate's common name (default tributary; PostgreSQL's
# `cert` authentication takes it as the user name).
# Writes DIR/{ca,other,server,client}.pem and their keys (0600; given to OWNER when
# run as root, for servers that run as another user). Does nothing when DIR/server.pem
# exists.
set -euo pipefail
dir=${1:?usage: deploy/test-ca.sh DIR SAN [OWNER]}
san=${2:?usage: deploy/test-ca.sh DIR SAN [OWNER]}
owner=${3:-}
client_cn=${4:-tributary}
mkdir -p "$dir"
cd "$dir"
[ -f server.pem ] && exit 0
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 3650 -subj "/CN=tributary test CA" 2>/dev/null
openssl req -x509 "${ec[@]}" -keyout other.key -out other.pem -days 3650 -subj "/CN=some other CA" 2>/dev/null
openssl req "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=tributary test server" 2>/dev/null
printf 'subjectAltName=%s\n' "$san" > san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 3650 -extfile san.ext 2>/dev/null
openssl req "${ec[@]}" -keyout client.key -out client.csr -subj "/CN=$client_cn" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 3650 -extfile client.ext 2>/dev/null
chmod 600 ./*.key
if [ -n "$owner" ] && [ "$(id -u)" = 0 ]; then chown "$owner": server.key server.pem; fi
