#!/usr/bin/env bash
# Builds the pinned Helm from its Go module into .cache/helm/bin (once) and prints the
# binary's path. Go is the one thing it needs: the project's CI machine has Go but no
# Helm package, and the Go module proxy is reachable where other downloads are not.
# A first build from an empty Go module cache takes minutes; later calls return at once.
set -euo pipefail
cd "$(dirname "$0")/../.."
HELM_MODULE="helm.sh/helm/v4"
HELM_VERSION="v4.3.2"
bin_dir="$PWD/.cache/helm/bin"
helm="$bin_dir/helm"
stamp="$bin_dir/.version"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

if [[ -x "$helm" && "$(cat "$stamp" 2>/dev/null)" == "$HELM_MODULE@$HELM_VERSION" ]]; then
  echo "$helm"
  exit 0
fi
if [[ ! -x "$GO" ]]; then
  echo "helm.sh: Go is needed to build Helm $HELM_VERSION (set GO=/path/to/go)" >&2
  exit 1
fi
echo "helm.sh: building $HELM_MODULE/cmd/helm@$HELM_VERSION into $bin_dir (minutes on a first run)" >&2
mkdir -p "$bin_dir"
rm -f "$stamp"
# GOFLAGS from the environment (e.g. -mod=vendor) must not steer an install@version.
GOFLAGS=-buildvcs=false GOBIN="$bin_dir" "$GO" install "$HELM_MODULE/cmd/helm@$HELM_VERSION" >&2
echo "$HELM_MODULE@$HELM_VERSION" > "$stamp"
echo "$helm"
