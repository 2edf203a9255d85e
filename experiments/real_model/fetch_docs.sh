#!/usr/bin/env bash
# Fetches the held-out long documents that are not on every machine: technical prose (python3.11-doc) and TeX
# (pari-doc), from Debian's packages, into DIR (default: runs/real_model/docs). The code document is the standard
# library's own (found by the evaluation itself).
set -euo pipefail
DIR=${1:-runs/real_model/docs}
mkdir -p "$DIR/debs"
cd "$DIR/debs"
apt-get download python3.11-doc pari-doc
for deb in *.deb; do dpkg-deb -x "$deb" ../extracted; done
echo "extracted into $DIR/extracted"
