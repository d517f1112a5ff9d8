#!/usr/bin/env bash
# Generate the ECDSA P-256 test PKI for the PyKMIP test server into DIR.
#
#   gen-certs.sh DIR
#
# Idempotent: if DIR/.certs-complete exists nothing is regenerated.
# All keys are PKCS#8 PEM ("BEGIN PRIVATE KEY"), certificates are X.509 v3 PEM,
# signed with ecdsa-with-SHA256, valid for 10 years from now.
#
# Files (see tests/services/README.md for what each is for):
#   ca.pem ca.key                   test CA that the server trusts and that signed server.pem
#   server.pem server.key           CN=localhost, SAN IP:127.0.0.1, DNS:localhost, EKU serverAuth
#   client.pem client.key           CN=snapcrypt-test-client, EKU clientAuth  (the normal client)
#   client-chain.pem                client.pem + ca.pem
#   client-bundle.pem               client.pem + client.key (one-file identity)
#   client2.pem client2.key         CN=snapcrypt-test-client-2, same CA: a second KMIP identity
#                                   (PyKMIP owner = cert CN, so it cannot use client's keys)
#   client-noeku.pem client-noeku.key  same CA but no clientAuth EKU: TLS works, every KMIP
#                                   request is answered Authentication Not Successful
#   other-ca.pem other-ca.key       an unrelated CA ("wrong CA")
#   other-client.pem other-client.key  client cert signed by other-ca: server rejects the
#                                   TLS handshake; and other-ca.pem as a client trust root
#                                   must make the client reject server.pem
set -euo pipefail

DIR=${1:?usage: gen-certs.sh DIR}
mkdir -p "$DIR"
cd "$DIR"

if [[ -f .certs-complete ]]; then
    exit 0
fi

command -v openssl >/dev/null || { echo "gen-certs.sh: openssl not found" >&2; exit 1; }

umask 077
cat > pki.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_noeku_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

DAYS=3650

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

mkca() { # name cn
    newkey "$1.key"
    openssl req -config pki.cnf -new -x509 -sha256 -days "$DAYS" -key "$1.key" \
        -subj "/O=snapcrypt tests/CN=$2" -extensions v3_ca -out "$1.pem"
}

mkleaf() { # name cn ca ext
    newkey "$1.key"
    openssl req -config pki.cnf -new -sha256 -key "$1.key" -subj "/O=snapcrypt tests/CN=$2" -out "$1.csr"
    openssl x509 -req -sha256 -days "$DAYS" -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" \
        -set_serial "0x$(openssl rand -hex 8)" -extfile pki.cnf -extensions "$4" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr"
}

mkca ca "snapcrypt test CA"
mkleaf server localhost ca server_ext
mkleaf client snapcrypt-test-client ca client_ext
mkleaf client2 snapcrypt-test-client-2 ca client_ext
mkleaf client-noeku snapcrypt-test-client-noeku ca client_noeku_ext
mkca other-ca "unrelated test CA"
# same CN as the good client on purpose: only the issuer differs
mkleaf other-client snapcrypt-test-client other-ca client_ext

cat client.pem ca.pem > client-chain.pem
cat client.pem client.key > client-bundle.pem

for f in ca server client client2 client-noeku other-client; do
    openssl verify -CAfile ca.pem "$f.pem" >/dev/null 2>&1 || [[ $f == other-client ]] \
        || { echo "gen-certs.sh: $f.pem does not verify" >&2; exit 1; }
done
openssl verify -CAfile other-ca.pem other-client.pem >/dev/null

# Certificates are public; keys stay 0600.
chmod 0644 ./*.pem
chmod 0600 ./*.key client-bundle.pem
touch .certs-complete
