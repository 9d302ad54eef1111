#!/usr/bin/env bash
# Build execbox's function-service handler image from execbox's own base (debootstrap'd Debian, made here
# if missing: as root, needs debootstrap) with execbox and awslambdaric as wheels in the context (made
# with this machine's pip, so the image build itself reaches no package index).
#   images/cloud-handler/build.sh [TAG]        default tag: execbox/cloud-handler:<version>
# Env: PYTHON (default: python3 with execbox importable, e.g. the project's .venv/bin/python).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
[[ -x $py ]] || py=python3
base=$("$py" - <<'PY'
from execbox.providers.docker import images
catalog = images.Catalog.load()
print(images.build_base(catalog, images.client().api, lambda line: None))
PY
)
version=$("$py" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' \
          "$repo/pyproject.toml")
tag=${1:-execbox/cloud-handler:$version}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# execbox as a wheel, built from this checkout, and every dependency, for the image's Python (Debian 12's 3.11)
"$py" -m pip wheel -q --wheel-dir "$ctx/wheels" "$repo" awslambdaric
cp "$here/Dockerfile" "$ctx/Dockerfile"
docker build --network host --build-arg "BASE=$base" --label io.execbox.image=cloud-handler -t "$tag" "$ctx"
echo "$tag"
