#!/usr/bin/env bash
# Generates the Go code for the .proto files under proto/ with buf and the
# protoc plugins pinned in tools/protoc/go.mod (no Buf Schema Registry, no network
# beyond the Go module proxy).
#
#   bash proto/generate.sh          regenerate in place
#   bash proto/generate.sh --check  regenerate into a temporary directory and
#                                   fail if the committed code differs (CI)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -modfile=tools/protoc/go.mod -o "$tmp/bin/" \
  google.golang.org/protobuf/cmd/protoc-gen-go \
  google.golang.org/grpc/cmd/protoc-gen-go-grpc
export PATH="$tmp/bin:$PATH"

if ! $check; then
  go tool -modfile=tools/go.mod buf generate
  exit 0
fi

go tool -modfile=tools/go.mod buf generate --output "$tmp/out"
# Compare the generated files both ways: changed, missing and left over.
stale=false
committed=$(cd proto && find . -name '*.pb.go' | sort)
fresh=$(cd "$tmp/out/proto" && find . -name '*.pb.go' | sort)
if [[ "$committed" != "$fresh" ]]; then
  diff <(echo "$committed") <(echo "$fresh") || true
  stale=true
fi
for f in $fresh; do
  if [[ -f proto/$f ]] && ! diff -u "proto/$f" "$tmp/out/proto/$f"; then
    stale=true
  fi
done
if $stale; then
  echo "generated code under proto/ is stale: run 'bash proto/generate.sh' and commit the result" >&2
  exit 1
fi
echo "generated code under proto/ is up to date"
